"""train.py allocates memory (touching every page) until the kernel kills it."""

chunks = []
while True:
    chunks.append(b"\x01" * (16 << 20))
