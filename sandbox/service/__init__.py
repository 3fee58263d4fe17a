"""The server's domain layer: state directory, ownership rules, uploads, the job queue.

Servicers in sandbox.api translate messages and call `Platform`; every ownership
decision (whose dataset, whose algorithm, who sees what of a job) is made here.
"""
