"""Worker processes: the supervisor that forks, watches and restarts them (``workers``), the
configs it may restart them from (``reloads``), and the inbox of their readiness messages."""
