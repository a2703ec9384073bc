"""A deliberately broken plugin: importing it raises."""

raise RuntimeError("this plugin is broken on purpose")
