"""GET /v1/sources/{doc_id}: the original document behind a citation, for people who click one.

Only documents the serving collection holds are served (the id is looked up in the ledger, never taken as a path):
a local file is sent as it is, an S3 object is a redirect to a short-lived presigned URL."""

from __future__ import annotations

import mimetypes

from anyio import to_thread
from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, RedirectResponse

from millrace import clients
from millrace.index import versions
from millrace.uris import display_name, s3_location, uri_to_path
from serving import routes
from serving.errors import ServingError

router = APIRouter(dependencies=[Depends(routes.authorized)])


@router.get("/v1/sources/{doc_id}")
async def open_source(doc_id: str, request: Request):
    settings = request.app.state.services.settings

    def lookup() -> dict | None:
        physical = versions.active_physical(settings)
        return clients.ledger(settings).rows_for(physical, [doc_id]).get(doc_id)

    row = await to_thread.run_sync(lookup)
    if row is None or row["state"] == "deleted" or not row.get("chunks"):
        raise ServingError(404, "not_found", f"document {doc_id} is not in the serving collection")
    uri = row["source_uri"]
    if "#" in uri:
        raise ServingError(404, "not_openable", f"{uri} is a record inside a file; its text is the cited passage")
    if uri.startswith("file:"):
        path = uri_to_path(uri)
        if not path.is_file():
            raise ServingError(404, "gone", f"{display_name(uri)} is no longer at its source")
        media = (row.get("content_type") or "").split(";")[0] or mimetypes.guess_type(path.name)[0]
        return FileResponse(path, media_type=media or "application/octet-stream", filename=path.name,
                            content_disposition_type="inline")
    if uri.startswith("s3://"):
        bucket, key = s3_location(uri)
        url = await to_thread.run_sync(lambda: clients.s3_filesystem(settings).url(f"{bucket}/{key}", expires=300))
        return RedirectResponse(url, status_code=307)
    raise ServingError(404, "not_openable", f"no way to open {uri}")
