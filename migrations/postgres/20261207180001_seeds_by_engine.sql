-- Seeds are kept per engine format: what the engine pushed of a source
-- (the manifest and the config, exactly as the registry holds them) is the
-- template of its further targets in that registry, and its bytes depend
-- on the engine's product, version, image store and tag method (`engine`).
-- The old seeds held only layers, which the new way cannot use: they go
-- (a seed costs one engine push to make again).
DROP TABLE seeds;
CREATE TABLE seeds (
    source_image_id TEXT COLLATE "C" NOT NULL,
    registry        TEXT COLLATE "C" NOT NULL,  -- host[:port], as in references
    engine          TEXT COLLATE "C" NOT NULL,  -- e.g. 'docker 26.1.5 containerd build'
    manifest        TEXT NOT NULL,              -- the pushed manifest, byte for byte
    media_type      TEXT NOT NULL,              -- the manifest's media type
    config          TEXT NOT NULL,              -- the pushed config, byte for byte
    layers          TEXT NOT NULL,              -- JSON: the manifest's layer descriptors
    repository      TEXT NOT NULL,              -- path in the registry, without the host
    recorded_at     TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (source_image_id, registry, engine)
);
CREATE INDEX seeds_by_time ON seeds (recorded_at);
