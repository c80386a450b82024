"""The bottom layer: one typed reader/writer per file that crosses layers.

Every file one part of rtl writes and another reads has its reader here, so there is one set of rules
per file (a second reader with other rules was a bug: `weights.json` repeated class ids were rejected by
one reader and silently overwritten by the other). Modules here import nothing from rtl but
`rtl.errors` and each other; everything else may import them. Nothing here imports torch at module level.

* `cache`    -- the content-addressed pretraining cache (generalists, subsets, rungs, experts);
* `weights`  -- `weights.json` (importance weights / class masses);
* `ranking`  -- a target's source ranking JSON (`rtl rank --json`, read by the ranked sweep).
* `specfile` -- a results dir's `spec.json` (sweeps and studies), owner-only;
* `checkpoint` -- a pretrained checkpoint dir (`model.pt` + `meta.json` = `CheckpointMeta`);
* `model_folder` -- a delivered model folder (checkpoint keys + classes, preprocessing, digests);
* `manifest` -- a corpus' `manifest.json`;
* `layout`   -- the paths under a sweep's results dir (spec.json, rankings/, models/, report/).
"""
