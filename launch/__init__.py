"""Start, supervise and stop Flower's processes (SuperLink, SuperNode, SuperExec, ``flwr``).

Shared by the simulation runner (``simulations/``) and the local deployment (``deploy/``):

- :mod:`launch.env`: the offline environment (defined once) and the Flower executables.
- :mod:`launch.signals`: SIGTERM/SIGHUP as an exception; signals ignored during clean-up.
- :mod:`launch.supervisor`: processes by PID, in their own sessions, tagged with a run
  marker that reaches the children Flower detaches; :meth:`ProcessSupervisor.stop_all`.
- :mod:`launch.net`: free ports, health polling.
- :mod:`launch.connection`: the ``$FLWR_HOME/config.toml`` connection file.
- :mod:`launch.flwr`: ``flwr ... --format json`` commands (register, list, run status).
- :mod:`launch.stream`: ``flwr run --stream`` and its run id.
- :mod:`launch.app_files`: the app's published files, staged for ``flwr run``.
"""
