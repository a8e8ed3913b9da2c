"""common: tiny helpers shared by packages that must not import each other (DESIGN.md's arrows).

One home per mechanism that several packages need; nothing here imports any package of this
project, so every package may import it:

    common.files      write_atomic / write_atomic_with (temp file + fsync + rename; a full disk is one
                      line, DiskFullError), fsync_dir; sha256_file and the `NAME.sha256`
                      sidecar (write_sha256_sidecar, recorded_sha256, verify_sha256)
    common.locks      file_lock (short, waiting), exclusive_lock (ownership, non-blocking; LockedError
                      names the holder), sweep_stale_temps (temp files of killed writers)
    common.serialize  plain (YAML/JSON-safe Python), dump_yaml / load_yaml, dump_json / load_json
    common.dotted     get_dotted / set_dotted / flatten on nested dicts, changed_keys (config diff)
    common.values     finite_or_none
    common.keys       HARMLESS_ON_RESUME: config keys whose change never alters the weights' trajectory
    common.imagenet   IMAGENET_MEAN, IMAGENET_STD
    common.paths      is_within (containment after symlinks: readers never leave a runs root)
    common.stats      point_se (binomial + seed standard error of an accuracy)
    common.schedule   lr_at (warm-up + half-cosine), set_lr (with each group's lr_scale)
    common.distributed  init / DistInfo / pick_device: joining a torchrun or srun launch (torch only)
"""
