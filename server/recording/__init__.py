"""Recording consent: who agreed to which text, when, and whether media is being recorded.

A pure core (``model``, ``core``): no await, no I/O, ``now`` passed in. The service that ties it to the
store and the media hub lives in ``server.recordings``.
"""
