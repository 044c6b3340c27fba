# The edgesentry hub (cloud-hub) for deploy/compose.yaml.
FROM python:3.11-slim-bookworm
# The broker files cloud-hub broker-config writes are group-owned by "mosquitto": same ids as the
# eclipse-mosquitto image (1883), so the broker container can read them from the shared volume.
RUN groupadd --system --gid 1883 mosquitto && useradd --system --uid 1883 --gid 1883 --no-create-home mosquitto
WORKDIR /opt/edgesentry
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY edge_agent ./edge_agent
COPY cloud_hub ./cloud_hub
COPY deploy/hub-init.sh ./deploy/hub-init.sh
RUN pip install --no-cache-dir '.[hub]'
ENV EDGESENTRY_HOME=/var/lib/edgesentry/hub
EXPOSE 8080
CMD ["cloud-hub", "serve", "--http", "0.0.0.0:8080"]
