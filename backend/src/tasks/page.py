"""Where a status email links, `/tasks/{id}`: the web app's view of that task.

Anyone may load it, so it answers only with a redirect into the app (`/#/tasks/{id}`), which asks
for a sign-in and then fetches the task through the API: the answer tells nothing, not even whether
the task exists.
"""

from fastapi import APIRouter
from fastapi.responses import RedirectResponse

from src.validation import PathId

router = APIRouter(include_in_schema=False)


def task_page_url(base_url: str, task_id: int) -> str:
    return f"{base_url.rstrip('/')}/tasks/{task_id}"


@router.get("/tasks/{task_id}")
def task_page(task_id: PathId) -> RedirectResponse:
    return RedirectResponse(f"/#/tasks/{task_id}", status_code=303)
