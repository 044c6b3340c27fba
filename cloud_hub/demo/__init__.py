"""The zero-setup demo: embedded broker, hub, three agents and a sensor simulator."""
