"""Running the service: settings, logging, metrics, the health endpoint, the API documents.

May import `protocol`; settings never import the transport.
"""
