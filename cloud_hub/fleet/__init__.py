"""The fleet: provisioned devices, their MQTT credentials and the broker files that enforce them.

``devices`` owns who may connect (hub database); ``broker_files`` turns that into Mosquitto's password
file, ACL file and ``mosquitto.conf``; ``tls`` makes the small CA the listener uses; ``passwords`` is the
one implementation of Mosquitto's password hash.
"""
