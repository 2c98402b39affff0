-- One row per distinct event: the latest ingested copy of each (tenant, event_type, event_id).

with

source as (

    select * from {{ source('warehouse', 'events') }}

),

deduplicated as (

    select *
    from source
    order by tenant, event_type, event_id, ingested_at desc
    limit 1 by tenant, event_type, event_id

),

renamed as (

    select
        concat(tenant, ':', event_type, ':', event_id) as event_uid,
        tenant,
        event_type,
        event_id,
        send_id,
        campaign,
        channel,
        provider,
        contact_id,
        provider_message_id,
        reason,
        occurred_at,
        ingested_at

    from deduplicated

)

select * from renamed
