"""Task 1 fails, the others succeed: shows --max-task-failures and the failure domain."""

import os
import sys

index = int(os.environ.get("IRIS_TASK_INDEX", "0"))
if index == 1:
    sys.exit(f"task {index}: cannot read shard {index}")
print(f"task {index}: done")
