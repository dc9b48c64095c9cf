-- title: Final-quality share of images, per team, today
-- description: Images generated at the expensive final tier as a share of all images (today's UTC
--   day); drafts and previews are cheap to iterate with.
SELECT
    scope_key AS team,
    images_draft + images_preview + images_edit + images_final + images_untiered AS images,
    images_final,
    round(images_final / (images_draft + images_preview + images_edit + images_final + images_untiered), 4) AS final_share
FROM window_totals_current
WHERE scope_kind = 'team'
  AND window_kind = 'day'
  AND window_tz = 'UTC'
  AND window_start = toStartOfDay(now(), 'UTC')
  AND images_draft + images_preview + images_edit + images_final + images_untiered > 0
ORDER BY final_share DESC, team;
