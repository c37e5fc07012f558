"""Run configs and category catalogs shipped with mixtune (see mixtune.resources)."""
