"""The client's models are the JSON shapes of the CLI, the API and the dashboard: they live in
``iris.cluster.models``, below both the controller's dashboard and the client; re-exported here."""

from iris.cluster.models import (
    EndpointInfo as EndpointInfo,
)
from iris.cluster.models import (
    JobState as JobState,
)
from iris.cluster.models import (
    JobStatus as JobStatus,
)
from iris.cluster.models import (
    LogLine as LogLine,
)
from iris.cluster.models import (
    TaskAttempt as TaskAttempt,
)
from iris.cluster.models import (
    TaskCounts as TaskCounts,
)
from iris.cluster.models import (
    TaskLogLine as TaskLogLine,
)
from iris.cluster.models import (
    TaskState as TaskState,
)
from iris.cluster.models import (
    TaskStatus as TaskStatus,
)
from iris.cluster.models import (
    TimeSpent as TimeSpent,
)
from iris.cluster.models import (
    WorkerInfo as WorkerInfo,
)
from iris.cluster.models import (
    parse_job_state as parse_job_state,
)
