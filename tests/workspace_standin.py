"""A local stand-in for the Databricks workspace API, for running the real Databricks CLI.

An ``http.server`` on 127.0.0.1 (random port, own thread) serving what
``databricks bundle validate`` calls, with the request and response shapes of the real
service (paths and fields as in databricks-sdk-go ``service/iam`` and ``service/workspace``,
which the CLI decodes them with):

* ``GET /.well-known/databricks-config``   host metadata the SDK probes on start-up
* ``GET /api/2.0/preview/scim/v2/Me``      the caller, an ``iam.User``: ``userName`` (an
                                            e-mail, or a service principal's application
                                            id), ``displayName``, ``groups[].display``
* ``GET /api/2.0/workspace/get-status``    ``path`` -> ``workspace.ObjectInfo``, or 404
                                            ``RESOURCE_DOES_NOT_EXIST``
* ``POST /api/2.0/workspace/mkdirs``       ``{"path"}``, creating missing parents -> ``{}``
* ``GET /api/2.0/permissions/directories/<object_id>``
                                            ``workspace.WorkspaceObjectPermissions`` of a folder
* ``GET /api/2.0/sql/warehouses``           ``sql.ListWarehousesResponse``: ``warehouses[]``
                                            (``sql.EndpointInfo``), one page; a bundle
                                            variable's ``lookup: warehouse: NAME`` lists them
                                            and takes the ``id`` of the one so named

Workspace paths are a folder tree in memory that starts with ``/``, ``/Users``,
``/Shared`` and every user's home folder; ``/Workspace/...`` is the same tree under its
other name, as in the product. A home folder and everything below it is managed by its user
(``user_name``, or ``service_principal_name`` for a service principal) and, inherited
from the root, by the ``admins`` group. The SQL warehouses are ``warehouses`` (name -> id),
serverless and running.

The caller is whoever the bearer token belongs to (``users``: token -> Identity), so one
stand-in serves a developer and the CI service principal side by side. Errors carry the
service's bodies: 401/403 for a missing or unknown token, and for any other path 404
``ENDPOINT_NOT_FOUND`` "No API found for 'GET /path'": a call the CLI newly makes shows up
in ``unknown_requests`` (the CLI takes many 404s as "absent" and goes on, so tests assert
that list is empty rather than rely on the CLI failing). Every request is recorded in
``requests``, with the identity that made it.
"""

from __future__ import annotations

import json
import posixpath
import threading
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from loopback import LoopbackServer, Request

WORKSPACE_ID = "1234567890123456"
ROOT_OBJECT_ID = 0
_SCIM_USER_SCHEMAS = [
    "urn:ietf:params:scim:schemas:core:2.0:User",
    "urn:ietf:params:scim:schemas:extension:workspace:2.0:User",
]


@dataclass(frozen=True)
class Identity:
    """A workspace user or service principal (``user_name`` is then its application id)."""

    user_name: str
    display_name: str
    groups: tuple[str, ...] = ("users",)
    service_principal: bool = False

    @property
    def home(self) -> str:
        return f"/Users/{self.user_name}"

    def principal(self) -> dict[str, str]:
        """This identity in an access control entry."""
        key = "service_principal_name" if self.service_principal else "user_name"
        return {key: self.user_name, "display_name": self.display_name}


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    body: dict[str, Any] | None
    caller: str | None  # user_name of the token's identity; None when unauthenticated

    def __str__(self) -> str:
        line = f"{self.method} {self.path}"
        if self.query:
            line += "?" + "&".join(f"{k}={v}" for k, values in self.query.items() for v in values)
        if self.body is not None:
            line += " " + json.dumps(self.body, separators=(",", ":"))
        return line


@dataclass
class _Folder:
    object_id: int
    owner: Identity | None  # the user whose home folder this is, or is under


class ApiError(Exception):
    def __init__(self, status: int, error_code: str | int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error_code": error_code, "message": message}


@dataclass
class WorkspaceStandIn(LoopbackServer):
    """Start with ``with WorkspaceStandIn({token: identity}) as ws:``; point the CLI at ``ws.url``."""

    users: dict[str, Identity]
    warehouses: dict[str, str] = field(default_factory=dict)  # name -> id
    requests: list[RecordedRequest] = field(default_factory=list)
    unknown_requests: list[RecordedRequest] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._next_object_id = 1_000_000_000_000_000
        self._folders: dict[str, _Folder] = {"/": _Folder(ROOT_OBJECT_ID, None)}
        for folder in ("/Users", "/Shared"):
            self._mkdirs(folder, owner=None)
        for identity in self.users.values():
            self._mkdirs(identity.home, owner=identity)
        self._start_server()

    def folders(self) -> list[str]:
        with self._lock:
            return sorted(self._folders)

    def path_of(self, object_id: int | str) -> str | None:
        """The folder with this ``object_id``, as the tree names it (``/Users/...``)."""
        with self._lock:
            return self._path_of(object_id)

    def _path_of(self, object_id: int | str) -> str | None:
        return next(
            (p for p, f in self._folders.items() if str(f.object_id) == str(object_id)), None
        )

    # -- endpoints ----------------------------------------------------------------------

    def respond(self, request: Request) -> tuple[int, Any, dict[str, str]]:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        status, body = self.handle(request.method, request.path, request.query, request.body, token)
        headers = {}
        if status == HTTPStatus.OK and request.path.endswith("/scim/v2/Me"):
            headers["X-Databricks-Org-Id"] = WORKSPACE_ID
        return status, body, headers

    def handle(
        self, method: str, path: str, query: dict[str, list[str]], body: Any, token: str
    ) -> tuple[int, Any]:
        caller = self.users.get(token)
        request = RecordedRequest(method, path, query, body, caller and caller.user_name)
        with self._lock:
            self.requests.append(request)
            try:
                return HTTPStatus.OK, self._route(request, caller, token)
            except ApiError as exc:
                return exc.status, exc.body

    def _route(self, request: RecordedRequest, caller: Identity | None, token: str) -> Any:
        route = (request.method, request.path)
        if route == ("GET", "/.well-known/databricks-config"):
            return {"oidc_endpoint": f"{self.url}/oidc", "workspace_id": WORKSPACE_ID}
        if not token:
            raise ApiError(
                HTTPStatus.UNAUTHORIZED,
                401,
                "Credential was not sent or was of an unsupported type for this API.",
            )
        if caller is None:
            raise ApiError(HTTPStatus.FORBIDDEN, 403, "Invalid access token.")
        if route == ("GET", "/api/2.0/preview/scim/v2/Me"):
            return self._me(caller)
        if route == ("GET", "/api/2.0/workspace/get-status"):
            return self._get_status(_one(request.query, "path"))
        if route == ("POST", "/api/2.0/workspace/mkdirs"):
            self._mkdirs(_workspace_path((request.body or {}).get("path")), owner=None)
            return {}
        prefix = "/api/2.0/permissions/directories/"
        if request.method == "GET" and request.path.startswith(prefix):
            return self._directory_permissions(request.path.removeprefix(prefix))
        if route == ("GET", "/api/2.0/sql/warehouses"):
            return {"warehouses": [self._warehouse(n, i) for n, i in self.warehouses.items()]}
        self.unknown_requests.append(request)
        raise ApiError(
            HTTPStatus.NOT_FOUND,
            "ENDPOINT_NOT_FOUND",
            f"No API found for '{request.method} {request.path}'",
        )

    def _me(self, caller: Identity) -> dict[str, Any]:
        user: dict[str, Any] = {
            "id": str(4_000_000_000 + list(self.users.values()).index(caller)),
            "userName": caller.user_name,
            "displayName": caller.display_name,
            "active": True,
            "groups": [
                {"display": group, "type": "direct", "value": str(5_000 + i)}
                for i, group in enumerate(caller.groups)
            ],
            "schemas": _SCIM_USER_SCHEMAS,
        }
        if not caller.service_principal:
            user["emails"] = [{"value": caller.user_name, "type": "work", "primary": True}]
            given, _, family = caller.display_name.partition(" ")
            user["name"] = {"givenName": given, "familyName": family}
        return user

    def _warehouse(self, name: str, warehouse_id: str) -> dict[str, Any]:
        return {
            "id": warehouse_id,
            "name": name,
            "cluster_size": "Small",
            "min_num_clusters": 1,
            "max_num_clusters": 1,
            "auto_stop_mins": 10,
            "enable_serverless_compute": True,
            "enable_photon": True,
            "warehouse_type": "PRO",
            "state": "RUNNING",
            "creator_name": "admin@example.com",
            "jdbc_url": f"jdbc:databricks://127.0.0.1:443/default;httpPath=/sql/1.0/warehouses/{warehouse_id}",
            "odbc_params": {
                "hostname": "127.0.0.1",
                "path": f"/sql/1.0/warehouses/{warehouse_id}",
                "protocol": "https",
                "port": 443,
            },
        }

    def _get_status(self, raw_path: str | None) -> dict[str, Any]:
        path = _workspace_path(raw_path)
        folder = self._folders.get(path)
        if folder is None:
            raise ApiError(
                HTTPStatus.NOT_FOUND, "RESOURCE_DOES_NOT_EXIST", f"Path ({raw_path}) doesn't exist."
            )
        return {"object_type": "DIRECTORY", "path": raw_path, "object_id": folder.object_id}

    def _mkdirs(self, path: str, owner: Identity | None) -> None:
        missing = []
        while path not in self._folders:
            missing.append(path)
            path = posixpath.dirname(path)
        inherited_owner = self._folders[path].owner
        for new in reversed(missing):
            self._next_object_id += 1
            self._folders[new] = _Folder(self._next_object_id, owner or inherited_owner)

    def _directory_permissions(self, object_id: str) -> dict[str, Any]:
        path = self._path_of(object_id)
        if path is None:
            raise ApiError(
                HTTPStatus.NOT_FOUND,
                "RESOURCE_DOES_NOT_EXIST",
                f"Directory with id {object_id} does not exist",
            )
        folder = self._folders[path]
        admins: dict[str, Any] = {"permission_level": "CAN_MANAGE", "inherited": path != "/"}
        if path != "/":
            admins["inherited_from_object"] = [f"/directories/{ROOT_OBJECT_ID}"]
        acl: list[dict[str, Any]] = [{"group_name": "admins", "all_permissions": [admins]}]
        if folder.owner is not None:
            home = self._folders[folder.owner.home]
            own = path == folder.owner.home
            permission: dict[str, Any] = {"permission_level": "CAN_MANAGE", "inherited": not own}
            if not own:
                permission["inherited_from_object"] = [f"/directories/{home.object_id}"]
            acl.insert(0, {**folder.owner.principal(), "all_permissions": [permission]})
        return {
            "object_id": f"/directories/{object_id}",
            "object_type": "directory",
            "access_control_list": acl,
        }


def _workspace_path(path: Any) -> str:
    """The tree's name for a workspace path: ``/Workspace/Users/x`` is ``/Users/x``."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise ApiError(
            HTTPStatus.BAD_REQUEST,
            "INVALID_PARAMETER_VALUE",
            f"Path ({path}) must be an absolute path.",
        )
    path = posixpath.normpath(path)
    if path == "/Workspace" or path.startswith("/Workspace/"):
        path = path.removeprefix("/Workspace") or "/"
    return path


def _one(query: dict[str, list[str]], key: str) -> str | None:
    values = query.get(key)
    return values[0] if values else None
