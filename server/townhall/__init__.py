"""Town-hall Q&A: politicians' office hours for many citizens (pure core in ``model`` and ``core``)."""
