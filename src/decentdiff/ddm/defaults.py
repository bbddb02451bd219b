"""Routing defaults, in a module without heavy imports (the command line reads them for --help).

The choice is measured: docs/reproduction.md, study 10 (issue 14).
"""

#: The routing ``sample``, ``eval``, ``demo`` and ``report`` use unless told otherwise: each image is
#: made by ONE expert drawn from the cluster prior (class-conditional: p(cluster | class)), with no
#: router call.
DEFAULT_ROUTING = "mixture"

#: What ``compare`` (and the demo) evaluates by default: the default, the paper's top-1, and top-2.
DEFAULT_ROUTINGS = ("mixture", "top1", "topk:2")
