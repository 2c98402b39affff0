-- Delivery funnel per tenant, campaign and channel. Every stage counts distinct sends, so a
-- contact clicking twice, or a callback delivered twice, still counts once.

with

events as (

    select * from {{ ref('stg_events') }}

),

attributable as (

    -- events without a send id cannot be attributed to a send, so they are not counted
    select * from events
    where send_id != ''

),

stage_counts as (

    select
        tenant,
        campaign,
        channel,
        uniqExactIf(send_id, event_type = 'sent') as sent,
        uniqExactIf(send_id, event_type = 'delivered') as delivered,
        uniqExactIf(send_id, event_type = 'opened') as opened,
        uniqExactIf(send_id, event_type = 'clicked') as clicked,
        uniqExactIf(send_id, event_type in ('send_failed', 'delivery_failed')) as failed,
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
        sent,
        delivered,
        opened,
        clicked,
        failed,
        complained,
        unsubscribed,
        if(sent = 0, 0, round(delivered / sent, 4)) as delivery_rate,
        if(sent = 0, 0, round(clicked / sent, 4)) as click_rate

    from stage_counts

)

select * from final
