"""What a run reports: the event FIFO, the pure progress reducer, live event numbering, and the record.

May import `protocol` and `run.process.output_tail`, nothing else of ansible_worker.
"""
