"""video_caps: what each video decoder takes, and the stream facts it is judged on.

Plain Python, no dependency: ``shard_tools`` (which decides at shard time what to copy,
re-encode or reject) and ``dali_pipelines`` (which refuses a folder its GPU decoder cannot
read before the first step) both import it downward. See :mod:`video_caps.decoders`.
"""
