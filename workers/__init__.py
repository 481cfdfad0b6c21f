"""Ray actors (thin: load, call core, persist) and the Ray helpers they share."""

import os

# Ray reads this switch once, when `ray` is first imported: "0" makes the IP of a node started by this process
# 127.0.0.1, so an embedded Ray binds loopback only. Set before any `import ray` below this package;
# workers.autoconnect refuses to start an embedded Ray if it did not take effect (ray imported earlier).
LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
os.environ.setdefault(LOOPBACK_SWITCH, "0")
