"""Everything that writes files: the model store, run directories, reports, figures, atomic
writes, mount checks."""
