"""Privacy: erasing a person on request (:mod:`.erasure`) and exporting everything the plugin
holds about them (:mod:`.export`)."""
