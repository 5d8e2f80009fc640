"""Stage 5: `convlint fix`: findings -> rewrites at chosen ranks -> verified, timed model -> OUT.

One module per step, in the order a run goes through them (``pipeline.fix`` drives them):

- ``options``: its options' vocabularies, defaults and validation (methods, objectives, tolerance).
- ``weightstore``: the model read without its weights' values; weights staged and streamed.
- ``calibration``: the samples, ``--inputs`` (.npz, .npy, images with ``--preprocess``) or noise.
- ``plan``: a finding -> a rewrite target, or the plain reason it cannot be rewritten.
- ``factorize``: SVD / Tucker-2 factorizations (weight and data-aware), the fold algebra.
- ``edit``: the targets' edits of the model with its weights, applied in one pass.
- ``verify``: onnxruntime in a child process under a time limit; the error measures.
- ``latency``: timing summaries; one rewrite's nodes cut out to time them alone.
- ``state``: what the steps below share: the run, a chosen rewrite, the result.
- ``prepare``: analysis and plan, the samples split, the reference outputs and statistics.
- ``search``: each rewrite's form and rank under the whole-model budget.
- ``settle``: timing, keep or drop, the combination verified, re-lint.
- ``write``: the kept rewrites as reported, the atomic write of OUT.
- ``pipeline``: ``fix``: the options validated, OUT resolved, the steps run in order.
- ``report``: at the end, its text and JSON reports.

Nothing is imported here: the command line's parser imports ``options`` alone, the other
modules are imported when `fix` runs (the command itself is ``convlint.commands.fix``). The
Python API's ``convlint.fix`` calls ``pipeline.fix``.
"""
