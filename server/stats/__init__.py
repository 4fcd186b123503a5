"""Statistics without personal data: the pure core (plain synchronous Python, ``now`` passed in).

``log``: what the event log keeps of a queue transition or a clerk's presence (no names, concerns, notes
or tokens; ticket ids and usernames only as one-way pseudonyms). ``buckets``: the histogram behind the
median and 90th percentile. ``aggregate``: what each log entry adds to the counters kept at write time
per department and local hour and day. ``report``: the query (department, period, granularity) and the
figures per hour, day or week. The stores (``server/store/eventlog.py``) keep the log and the counters.
"""
