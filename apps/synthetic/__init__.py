"""mambakit synthetic app (installed as mambakit.apps.synthetic): the capability suite of issue #12, in progress.

generators   seeded batches of the token tasks: selective copying (Mamba paper), induction heads (H3 / Mamba
             paper) and multi-query associative recall (Zoology), as ../shared/notes/capabilities.md defines them
"""
