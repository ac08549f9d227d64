"""Sites: where cameras and the edge boxes that watch them are. One site, ``default``, holds everything an
operator registers without naming one."""

from __future__ import annotations

from django.db import transaction

from webapp.field_errors import about
from webapp.names import clean_name
from webapp.workloads.models import Site, default_site_id
from webapp.workloads.services.common import check_unique_name


def site_default() -> Site:
    """Return the default site, creating it the first time it is needed."""
    return Site.objects.get(pk=default_site_id())


def site_or_default(site: Site | None) -> Site:
    """Return ``site``, or the default site when None."""
    return site if site is not None else site_default()


@transaction.atomic
def site_create(*, name: str) -> Site:
    """Create the site ``name``; return it.

    Raises:
        ValidationError: an empty, over-long or taken name.
    """
    with about("name"):
        name = clean_name(name, "site")
    check_unique_name(Site, name)
    return Site.objects.create(name=name)
