"""LLM-as-a-judge for the kick generation tasks (summarization, instruction following, MT-Bench).

Modules, one job each:

* :mod:`.settings`  -- judge settings from ``KICK_JUDGE_*`` env vars / ``--metadata`` (never the API key)
* :mod:`.backends`  -- OpenAI-compatible HTTP endpoint (retries, backoff, clear 401/404 errors) and
  an in-process Hugging Face model
* :mod:`.cache`     -- persistent SQLite cache keyed by judge identity + protocol version + prompt
* :mod:`.parsing`   -- tolerant verdict parsers (``None`` = invalid, never an exception)
* :mod:`.prompts`   -- the pairwise four-criteria prompt and FastChat's judge prompts
* :mod:`.protocols` -- pairwise four criteria in both orders; FastChat single-answer grading
* :mod:`.runner`    -- :class:`~.runner.Judge` (cache + backend + thread pool + progress bar)
* :mod:`.session`   -- the judge used inside an lm-eval run (from ``process_results``)
* :mod:`.samples`   -- reading ``--log_samples`` files; task -> judging recipe
* :mod:`.cli`       -- ``kick judge``
"""
