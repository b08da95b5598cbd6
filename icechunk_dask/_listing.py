"""Listing a workspace's keys: the snapshot's node tree, pre-built layers and the changes.

A mixin of :class:`~icechunk_dask._workspace.Workspace`: ``list_dir`` answers
from the snapshot's node tree (no manifest is read for a group) and the
uncommitted changes; a node's manifests, and its pre-built layers, are read
only when a listing reaches into the node.
"""

from __future__ import annotations

from typing import Any

from icechunk_dask._assets import AssetManager
from icechunk_dask._changeset import ChangeSet
from icechunk_dask._manifests import load_node
from icechunk_dask._prebuilt import layered_keys
from icechunk_dask.format import ChunkRef, NodeManifests
from icechunk_dask.format._keys import is_meta_key

__all__ = ["Listing"]


class Listing:
    """The listing methods of a workspace (see :class:`~icechunk_dask._workspace.Workspace`)."""

    assets: AssetManager
    base: str
    cs: ChangeSet
    inh_meta: dict[str, bytes | None]
    inh_layers: dict[str, NodeManifests]

    async def inherited_chunks(self) -> dict[str, ChunkRef | None]:
        """Uncommitted chunk references inherited from the parent."""
        raise NotImplementedError

    def _cleared(self) -> set[str]:
        raise NotImplementedError

    def hidden(self, key: str, cleared: set[str] | None = None) -> bool:
        """Whether ``key``'s committed value is hidden by a ``delete_dir`` of this view."""
        raise NotImplementedError

    async def _layered(self, under: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """Entries of the inherited and own pre-built layers of nodes that ``under`` reaches."""

        def reached(layers: dict[str, NodeManifests]) -> list[str]:
            return [
                n
                for n in layers
                if (f"{n}/" if n else "").startswith(under)
                or under.startswith(f"{n}/" if n else "")
            ]

        inh = await layered_keys(self.assets, self.inh_layers, reached(self.inh_layers))
        own = await layered_keys(self.assets, self.cs.layers, reached(self.cs.layers))
        return inh, own

    async def _committed_keys(self, under: str) -> set[str]:
        """Committed keys that may start with ``under`` (a superset is fine), cleared ones excluded."""
        snap = await self.assets.get_snapshot(self.base, expired_ok=True)
        cleared = self._cleared()
        keys = {k for k in snap.meta if k.startswith(under)}
        for node, nm in snap.nodes.items():
            head = f"{node}/" if node else ""
            if not (head.startswith(under) or under.startswith(head)):
                continue
            if any(p == "" or head.startswith(p + "/") for p in cleared):
                continue
            keys.update(head + suffix for suffix in await load_node(self.assets, node, nm))
        if cleared:
            keys = {k for k in keys if is_meta_key(k) or not self.hidden(k, cleared)}
        return keys

    def _overlay(
        self,
        keys: set[str],
        prefix: str,
        inherited: dict[str, Any],
        layered: tuple[dict[str, Any], dict[str, Any]] = ({}, {}),
    ) -> set[str]:
        layers: list[dict[str, Any]] = [
            layered[0],
            self.inh_meta,
            inherited,
            layered[1],
            self.cs.meta,
            self.cs.chunks,
        ]
        for layer in layers:
            for k, v in list(layer.items()):
                if not k.startswith(prefix):
                    continue
                if v is None:
                    keys.discard(k)
                else:
                    keys.add(k)
        return keys

    async def list_prefix(self, prefix: str) -> set[str]:
        """All keys starting with ``prefix`` in this workspace's view."""
        committed = {k for k in await self._committed_keys(prefix) if k.startswith(prefix)}
        inherited = await self.inherited_chunks()
        return self._overlay(committed, prefix, inherited, await self._layered(prefix))

    async def list_dir(self, prefix: str) -> set[str]:
        """The names directly under directory ``prefix`` ("" = the root).

        Answered from the snapshot's node tree and the uncommitted changes: a
        node's manifests are read only when the listing reaches into the node
        (or deletions make a node's emptiness uncertain), never for a group.
        """
        head = f"{prefix}/" if prefix else ""
        snap = await self.assets.get_snapshot(self.base, expired_ok=True)
        inherited = await self.inherited_chunks()
        cleared = self._cleared()
        deleted = [
            k for layer in (inherited, self.cs.chunks) for k, v in layer.items() if v is None
        ]
        # nodes whose pre-built layers hold deletions: their keys must be listed too
        deleted.extend(
            f"{n}/" if n else ""
            for layers in (self.inh_layers, self.cs.layers)
            for n, lnm in layers.items()
            if any(x.n_del for stack in lnm.boxes.values() for x in stack)
        )
        children: set[str] = set()
        exact: set[str] = set()  # keys that must be checked one by one

        def changed(nhead: str) -> bool:
            """Whether this workspace deleted keys under ``nhead`` (its emptiness is unknown)."""
            return any(k.startswith(nhead) for k in deleted) or any(
                p.startswith(nhead) for p in cleared
            )

        for node, nm in snap.nodes.items():
            nhead = f"{node}/" if node else ""
            if any(p == "" or nhead.startswith(p + "/") for p in cleared):
                continue
            if nhead.startswith(head) and nhead != head:
                child = nhead[len(head) :].split("/", 1)[0]
                if not changed(nhead) and nm.surely_nonempty:
                    children.add(child)
                    continue
            elif not head.startswith(nhead):
                continue
            elif (
                nhead == head
                and nm.encoding is not None
                and nm.encoding[0] == "default"
                and "" not in nm.boxes
                and (nm.exact or nm.surely_nonempty)
                and not changed(nhead)
            ):
                if nm.surely_nonempty:
                    children.add("c")
                continue  # exact and empty: no chunk
            # a listing inside a node (a directory of its chunk grid) keeps only what is under it
            exact.update(
                k
                for s in await load_node(self.assets, node, nm)
                if (k := nhead + s).startswith(head)
            )
        for key in snap.meta:
            if key.startswith(head):
                exact.add(key)
        if cleared:
            exact = {k for k in exact if is_meta_key(k) or not self.hidden(k, cleared)}
        reach: list[list[str]] = [[], []]
        for i, layers in enumerate((self.inh_layers, self.cs.layers)):
            for n, lnm in layers.items():
                nhead = f"{n}/" if n else ""
                if (
                    nhead.startswith(head)
                    and nhead != head
                    and not any(k.startswith(nhead) for k in deleted)
                    and any(stack[0].n_set for stack in lnm.boxes.values())
                ):  # the newest layer of a box holds live references: the child exists
                    children.add(nhead[len(head) :].split("/", 1)[0])
                elif nhead.startswith(head) or head.startswith(nhead):
                    reach[i].append(n)
        layered = (
            await layered_keys(self.assets, self.inh_layers, reach[0]),
            await layered_keys(self.assets, self.cs.layers, reach[1]),
        )
        for key in self._overlay(exact, head, inherited, layered):
            children.add(key[len(head) :].split("/", 1)[0])
        return children
