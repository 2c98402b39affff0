"""The policy files an operator writes (``policies/config/*.yaml``), typed and validated.

Everything a send depends on is checked at load time, so a typo fails with the file and key path
instead of mid-campaign. One module per concern, imported in this order (each only from those
before it; nothing here imports ``resources``, ``orchestrator_assets`` or ``gateway``):

- ``fields``: shared field types (slugs, env-var names) and the strict base model
- ``sms_segments``: how many SMS parts a text costs (GSM-7 / UCS-2)
- ``channels``: providers, channels and what each channel's messages may contain
- ``templates``: the sandboxed Jinja2 environment: parse, inspect, compile
- ``accounts``: a tenant's provider accounts and which one carries a channel
- ``tenants``: ``tenants.yaml`` (tenants, their accounts and webhook subscriptions)
- ``segments``: ``segments.yaml`` (AND/OR/NOT rules over contact fields)
- ``campaigns``: ``campaigns.yaml`` (per-channel content, schedule or trigger, fallback)
- ``policy``: ``policy.yaml`` (consent, suppression, dispatch, webhook delivery)
- ``rendering``: one campaign message rendered for one contact
- ``loader``: reading the YAML files and cross-checking them into a ``PolicyBundle``
"""
