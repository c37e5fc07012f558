"""Small licensed data shipped with mixtune, each folder with its PROVENANCE.md (see mixtune.resources)."""
