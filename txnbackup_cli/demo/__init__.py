"""``txnbackup demo``: a private fleet and a narrated scenario that shows the whole idea.

- ``services``: the Redis it uses (an answering one, else a private ``redis-server``) and its
  own worker processes, all stopped at the end;
- ``vm``: a sample VM whose drives are files in the work directory, and its guest writes;
- ``narration``: what is printed (rich);
- ``walkthrough``: what both scenarios share: steps run in order, each narrated and checked;
  a step that does not come out as expected raises ``DemoFailed``, so the demo doubles as a
  smoke test;
- ``scenario`` and ``steps``: the sample VM's seven steps (``qemu``: a running VM's).
"""
