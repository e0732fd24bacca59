-- Registry-side publishing (`publish_via`): a job may ask for the engine
-- path only; NULL takes the service's `--publish-via`.
ALTER TABLE jobs ADD COLUMN publish_via TEXT;

-- Which way a published target went: 'engine' (tag, push, untag) or
-- 'registry' (config and manifest written by publishd's registry client).
-- NULL while it runs, and for targets that were up to date or did not publish.
ALTER TABLE targets ADD COLUMN published_via TEXT;

-- What the engine pushed of a source image to a registry: the layer
-- descriptors of the manifest the registry holds, and a repository there
-- that holds the layers (a cross-repository mount's `from`). Any further
-- target of the source in that registry can then be written registry-side.
CREATE TABLE seeds (
    source_image_id TEXT NOT NULL,
    registry        TEXT NOT NULL,  -- host[:port], as in references
    layers          TEXT NOT NULL,  -- JSON: [{mediaType, size, digest}] in manifest order
    repository      TEXT NOT NULL,  -- path in the registry, without the host
    recorded_at     TEXT NOT NULL,
    PRIMARY KEY (source_image_id, registry)
);
