"""Protocol v1 as data: message models, topic names, signatures, and the group's claim book.

Pure: nothing here opens a socket, a file (but key files), or a process. It may import only
the standard library, pydantic and cryptography, never another package of ansible_worker.
"""
