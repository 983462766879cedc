"""Every console page and the guard it sits behind, in one list."""

from __future__ import annotations

from starlette.routing import BaseRoute, Route

from service.console import admin_pages, mapping_page, pages
from service.console.context import guarded


def all_routes() -> list[BaseRoute]:
    return [
        Route("/", guarded(pages.overview)),
        Route("/users", guarded(pages.users)),
        Route("/users/rows", guarded(pages.user_rows)),
        Route("/users/{login}", guarded(pages.user)),
        Route("/audit", guarded(pages.audit)),
        Route("/mapping", guarded(mapping_page.show)),
        Route("/mapping/preview", guarded(mapping_page.preview), methods=["POST"]),
        Route("/mapping/save", guarded(mapping_page.save), methods=["POST"]),
        Route("/mapping/history", guarded(mapping_page.history)),
        Route("/mapping/versions/{number:int}", guarded(mapping_page.version)),
        Route("/mapping/versions/{number:int}/restore", guarded(mapping_page.restore), methods=["POST"]),
        Route("/mapping/export", guarded(mapping_page.export)),
        Route("/accounts", guarded(admin_pages.accounts)),
        Route("/accounts/sign-in", guarded(admin_pages.account_sign_in), methods=["POST"]),
        Route("/accounts/sign-in/status", guarded(admin_pages.account_sign_in_status)),
        Route("/credentials", guarded(admin_pages.credentials)),
        Route("/credentials/import", guarded(admin_pages.credentials_import), methods=["POST"]),
        Route("/credentials/set", guarded(admin_pages.credentials_set), methods=["POST"]),
        Route("/credentials/delete", guarded(admin_pages.credentials_delete), methods=["POST"]),
        Route("/dead-letters", guarded(admin_pages.dead_letters)),
        Route("/dead-letters/replay", guarded(admin_pages.dead_replay), methods=["POST"]),
        Route("/dead-letters/purge", guarded(admin_pages.dead_purge), methods=["POST"]),
    ]
