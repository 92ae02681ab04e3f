"""Activation: destinations (signed webhooks) and the message templates sent to them.

What the dispatcher calls, one module per idea:

- ``store.sendable_destination(session=, box=, name=)`` -> ``SendableDestination`` (secret
  opened), ``store.load_template(session=, name=)`` -> ``CompiledTemplate``;
- ``templates.message_context(profile=, trigger=)`` and ``templates.render_message(template,
  context)`` -> ``RenderedMessage``;
- ``urls.check_destination_url_async(url, allow_private=)`` (``send_webhook`` calls it too);
- ``webhooks.send_webhook(client=, destination=, webhook_id=, body=, allow_private=)`` ->
  ``DeliveryResult``, with a client from ``webhooks.webhook_client()``.

The errors they raise are listed in ``app.dispatch.errors``.
"""
