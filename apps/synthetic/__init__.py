"""mambakit synthetic app (installed as mambakit.apps.synthetic): the capability suite of issue #12.

generators   seeded batch generators of selective copying (Mamba paper), induction heads (H3 / Mamba paper),
             multi-query associative recall (Zoology; the Mamba-2 paper's harder variant) and copying (Jelassi et
             al.), as ../shared/notes/capabilities.md defines them
data         the tasks as datasets: example i from a seed hashed from (run seed, i); fixed validation examples
tasks        cross-entropy and accuracy over the scored positions only
icl          Park et al.'s in-context learning tasks on vector prompts (linear regression with its curriculum, sparse
             parity, vector-valued MQAR): seeded prompt ingredients, their datasets and trainer Task
cli          the domain: `mambakit train|eval synthetic --task T --model mamba|mamba-lti|transformer|mambaformer|
             hybrid [--positions rope|learned|none]`
bench        `mambakit bench capabilities --tier cpu|gpu`: every (task, model) pair of a tier trained and evaluated,
             records, a report beside the papers' numbers, and the tier's checks
"""
