-- Delivery funnel per tenant, campaign and channel. Every stage counts distinct sends, so a
-- contact clicking twice, or a callback delivered twice, still counts once. Delivery is left
-- unknown (null) where a provider never reports it, instead of guessed from acceptance.

with

events as (

    select * from {{ ref('stg_events') }}

),

capabilities as (

    select * from {{ ref('provider_capabilities') }}

),

attributable as (

    -- events without a send id cannot be attributed to a send, so they are not counted;
    -- a provider missing from the seed is not assumed to report delivery
    select
        events.tenant,
        events.campaign,
        events.channel,
        events.send_id,
        events.event_type,
        coalesce(capabilities.delivery_receipts, false) as delivery_receipts

    from events
    left join capabilities on events.provider = capabilities.provider
    where events.send_id != ''

),

stage_counts as (

    select
        tenant,
        campaign,
        channel,
        uniqExactIf(send_id, event_type in ('sent', 'send_failed')) as attempted,
        uniqExactIf(send_id, event_type = 'sent') as accepted,
        uniqExactIf(send_id, event_type = 'sent' and not delivery_receipts) as accepted_without_receipts,
        uniqExactIf(send_id, event_type = 'delivered') as delivered_receipts,
        uniqExactIf(send_id, event_type = 'delivery_failed') as undelivered_receipts,
        uniqExactIf(send_id, event_type = 'opened') as opened,
        uniqExactIf(send_id, event_type = 'clicked') as clicked,
        uniqExactIf(send_id, event_type = 'send_failed') as refused,
        uniqExactIf(send_id, event_type = 'complained') as complained,
        uniqExactIf(send_id, event_type = 'unsubscribed') as unsubscribed

    from attributable
    group by tenant, campaign, channel

),

final as (

    select
        tenant,
        campaign,
        channel,
        attempted,
        accepted,
        if(accepted_without_receipts > 0, null, delivered_receipts) as delivered,
        opened,
        clicked,
        refused,
        if(accepted_without_receipts > 0, null, undelivered_receipts) as undelivered,
        complained,
        unsubscribed,
        if(accepted_without_receipts > 0 or accepted = 0, null, round(delivered_receipts / accepted, 4)) as delivery_rate,
        if(accepted = 0, null, round(clicked / accepted, 4)) as click_rate

    from stage_counts

)

select * from final
