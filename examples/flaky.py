"""Fail on the first attempt, succeed on the retry: shows --max-retries at work."""

import os
import sys

attempt = int(os.environ.get("IRIS_ATTEMPT_ID", "0"))
if attempt == 0:
    sys.exit(f"attempt {attempt}: simulated crash")
print(f"attempt {attempt}: succeeded")
