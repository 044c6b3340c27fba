"""``python -m cloud_hub.cli``: the same as the ``cloud-hub`` console script."""

from cloud_hub.cli import main

main()
