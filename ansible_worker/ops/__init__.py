"""Running the service: settings, logging, metrics, the health endpoint, the API documents.

May import `protocol` and `mqtt.options` (what a link is made of); settings never import the transport.
"""
