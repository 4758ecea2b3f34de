"""What the tests and the benchmarks share: a Mosquitto broker, OpenSSH servers, certificates, free ports.

Not part of the package (the wheel ships `ansible_worker` alone): test scaffolding has no
place on a worker's machine. The tests and the benchmarks both run from a checkout, whose
top directory is on their path. Imports nothing of `tests` and nothing of `benchmarks`.
"""
