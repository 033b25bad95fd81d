"""Online prediction on Ray Serve: request schemas, decoding, deployments and the app builder.

Deploy with `serve run serve_configs/cpu.yaml`; `dymo_ray.serve.app.build_app` is the
import path of the configs. Importing this package does not import Ray.
"""
