"""A participant's submission that never finishes (expected to be stopped at its time limit)."""

import time

print("training a very large model...", flush=True)
epoch = 0
while True:
    epoch += 1
    print(f"epoch {epoch}", flush=True)
    time.sleep(0.5)
