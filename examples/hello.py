"""Print who this task is. Run it with: iris job run --replicas 4 -- python examples/hello.py"""

from iris.client import get_job_info

info = get_job_info()
if info is None:
    print("not running inside an Iris task")
else:
    print(f"hello from task {info.task_index} of {info.num_tasks} (job {info.job_id}, attempt {info.attempt_id}, worker {info.worker_id})")
