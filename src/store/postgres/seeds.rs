//! Seeds of registry-side publishing: what the engine pushed of a source
//! image to a registry, per source image id and registry host.

use anyhow::Context;
use sqlx::Row;

use super::PgStore;
use crate::domain::publish_via::Seed;
use crate::store::{StoreResult, now};

impl PgStore {
    /// The seed of `source_image_id` in `registry`, if the engine pushed it there.
    pub async fn seed(&self, source_image_id: &str, registry: &str) -> StoreResult<Option<Seed>> {
        let row = sqlx::query(
            "SELECT layers, repository FROM seeds WHERE source_image_id = $1 AND registry = $2",
        )
        .bind(source_image_id)
        .bind(registry)
        .fetch_optional(&self.pool)
        .await
        .context("reading a seed")?;
        let Some(row) = row else {
            return Ok(None);
        };
        Ok(Some(Seed {
            layers: serde_json::from_str(row.get("layers"))
                .context("bad seed layers in the database")?,
            repository: row.get("repository"),
        }))
    }

    /// Records (or replaces: the last push that left the layers somewhere is
    /// the best place to mount them from) the seed of `source_image_id`.
    pub async fn record_seed(
        &self,
        source_image_id: &str,
        registry: &str,
        seed: &Seed,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO seeds (source_image_id, registry, layers, repository, recorded_at)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (source_image_id, registry) DO UPDATE SET
                 layers = excluded.layers, repository = excluded.repository,
                 recorded_at = excluded.recorded_at",
        )
        .bind(source_image_id)
        .bind(registry)
        .bind(serde_json::to_string(&seed.layers)?)
        .bind(&seed.repository)
        .bind(now())
        .execute(&self.pool)
        .await
        .context("recording a seed")?;
        Ok(())
    }
}
