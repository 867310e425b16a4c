#!/usr/bin/env python3
"""Fidelity check of the Genesys emulator against Genesys' official Python SDK
(purecloudplatformclientv2).

Usage: check.py BASE_URL   (an emulator started with --exclusive-subscriptions)
       check.py --records FILE [--mappings notificationMappings.json]

It logs in with client credentials, drives the notification API through the
SDK (channels, subscriptions, availabletopics), the directory (users,
queues, queue members, walking every page) and the current state a client
reads after a gap (bulk and per-user presence, routing status, the
conversation details query), then checks sample event bodies
and real socket frames against the SDK models. The SDK's own
deserializer is lenient (unknown fields are dropped, bad enum values become
"outdated_sdk_version"), so every reply is also checked strictly: each JSON
field must be a field of the model, with the model's type, recursively, and
no enum may fall back to "outdated_sdk_version". Any failure makes the exit
status non-zero.

With --records it checks the bridge's resync records instead (NDJSON, one
{"topic", "value"} a line, as tests/resync_bodies.rs writes them): each
value must be a notification envelope (topicName, version, eventBody,
metadata.CorrelationId, nothing else) and its eventBody must be, strictly,
the SDK model the SDK's notification mappings give for its topic.
"""

import json
import os
import sys
import time
import urllib.request

import PureCloudPlatformClientV2 as gc
from PureCloudPlatformClientV2.rest import ApiException
from dateutil import parser as dateparser
import websocket  # websocket-client

CLIENT_ID = "emulator-client"
CLIENT_SECRET = "emulator-secret"

# Topic template -> SDK model of its eventBody. Written from the SDK's
# documentation, not taken from the emulator.
BODY_MODELS = {
    "v2.users.{id}.presence": "PresenceEventUserPresence",
    "v2.users.{id}.routingStatus": "UserRoutingStatusUserRoutingStatus",
    "v2.users.{id}.activity": "AgentActivityChangedTopicAgentActivity",
    "v2.users.{id}.conversations": "ConversationEventTopicConversation",
    "v2.users.{id}.conversations.calls": "ConversationEventTopicConversation",
    "v2.users.{id}.conversations.callbacks": "ConversationEventTopicConversation",
    "v2.users.{id}.conversations.chats": "ConversationEventTopicConversation",
    "v2.users.{id}.conversations.emails": "ConversationEventTopicConversation",
    "v2.users.{id}.conversations.messages": "ConversationEventTopicConversation",
    "v2.routing.queues.{id}.conversations": "QueueConversationEventTopicConversation",
    "v2.routing.queues.{id}.conversations.calls": "QueueConversationEventTopicConversation",
    "v2.routing.queues.{id}.conversations.callbacks": "QueueConversationEventTopicConversation",
    "v2.routing.queues.{id}.conversations.chats": "QueueConversationEventTopicConversation",
    "v2.routing.queues.{id}.conversations.emails": "QueueConversationEventTopicConversation",
    "v2.routing.queues.{id}.conversations.messages": "QueueConversationEventTopicConversation",
    "v2.routing.queues.{id}.users": "QueueUserEventTopicQueueMember",
    "v2.detail.events.conversation.{id}.acd.start": "AcdStartDetailEventTopicAcdStartEvent",
    "v2.detail.events.conversation.{id}.acd.end": "AcdEndDetailEventTopicAcdEndEvent",
    "v2.detail.events.conversation.{id}.acw": "AcwDetailEventTopicAfterCallWorkEvent",
    "v2.detail.events.conversation.{id}.attributes": "AttributeDetailEventTopicAttributeUpdateEvent",
    "v2.detail.events.conversation.{id}.customer.start": "CustomerStartDetailEventTopicCustomerStartEvent",
    "v2.detail.events.conversation.{id}.customer.end": "CustomerEndDetailEventTopicCustomerEndEvent",
    "v2.detail.events.conversation.{id}.flow.start": "FlowStartDetailEventTopicFlowStartEvent",
    "v2.detail.events.conversation.{id}.flow.end": "FlowEndDetailEventTopicFlowEndEvent",
    "v2.detail.events.conversation.{id}.outbound": "OutboundDetailEventTopicOutboundInitEvent",
    "v2.detail.events.conversation.{id}.user.start": "UserStartDetailEventTopicUserStartEvent",
    "v2.detail.events.conversation.{id}.user.end": "UserEndDetailEventTopicUserEndEvent",
    "v2.detail.events.conversation.{id}.voicemail.start": "VoicemailStartDetailEventTopicVoicemailStartEvent",
    "v2.detail.events.conversation.{id}.voicemail.end": "VoicemailEndDetailEventTopicVoicemailEndEvent",
    "v2.analytics.queues.{id}.observations": "QueueObservationDataContainer",
    "v2.analytics.conversation.{id}.metrics": "ConversationMetricsTopicConversationMetricRecord",
}

# Fields each body must have (beyond "known to the model"): the ones a
# consumer keys or orders on.
REQUIRED = {
    "PresenceEventUserPresence": ["presenceDefinition", "modifiedDate"],
    "UserRoutingStatusUserRoutingStatus": ["id", "routingStatus"],
    "AgentActivityChangedTopicAgentActivity": ["id", "routingStatus", "presence"],
    "ConversationEventTopicConversation": ["id", "participants"],
    "QueueConversationEventTopicConversation": ["id", "participants"],
    "QueueUserEventTopicQueueMember": ["id", "queueId", "joined"],
    "QueueObservationDataContainer": ["group", "data"],
    "ConversationMetricsTopicConversationMetricRecord": ["conversationId", "metric", "metricDate"],
    "Channel": ["id", "connectUri", "expires"],
    "ChannelTopic": ["id", "state"],
    "ErrorBody": ["message", "code", "status"],
    "SystemMessageSystemMessage": ["channelId", "message"],
    "UserEntityListing": ["entities", "pageSize", "pageNumber", "total", "pageCount",
                          "firstUri", "selfUri", "lastUri"],
    "QueueEntityListing": ["entities", "pageSize", "pageNumber", "total", "pageCount",
                           "firstUri", "selfUri", "lastUri"],
    "QueueMemberEntityListing": ["entities", "pageSize", "pageNumber", "firstUri", "selfUri"],
    "User": ["id", "name", "state", "division", "selfUri"],
    "Queue": ["id", "name", "division", "memberCount", "dateCreated", "selfUri"],
    "QueueMember": ["id", "name", "user", "memberBy", "joined", "selfUri"],
    "Division": ["id", "name"],
    "UcUserPresence": ["id", "userId", "source", "sourceId", "presenceDefinition", "message", "modifiedDate"],
    "UserPresence": ["source", "presenceDefinition", "modifiedDate"],
    "PresenceDefinition": ["id", "systemPresence"],
    "RoutingStatus": ["userId", "status", "startTime"],
    "AnalyticsConversationQueryResponse": ["totalHits"],
    "AnalyticsConversationWithoutAttributes": ["conversationId", "conversationStart", "participants"],
    "AnalyticsParticipantWithoutAttributes": ["participantId", "purpose", "sessions"],
    "AnalyticsSession": ["mediaType", "segments"],
    "AnalyticsConversationSegment": ["segmentStart", "segmentType"],
}
for _m in BODY_MODELS.values():
    if "DetailEventTopic" in _m:
        REQUIRED[_m] = ["eventTime", "conversationId"]

failures = []
passes = 0


def ok(cond, what):
    global passes
    if cond:
        passes += 1
    else:
        failures.append(what)
        print(f"FAIL: {what}", flush=True)


def model_class(name):
    return getattr(gc, name)


def check_type(typ, value, path):
    """Strictly checks one JSON value against an SDK swagger type."""
    if value is None:
        return
    if typ.startswith("list["):
        if not isinstance(value, list):
            ok(False, f"{path}: expected a list for {typ}, got {type(value).__name__}")
            return
        inner = typ[5:-1]
        for i, v in enumerate(value):
            check_type(inner, v, f"{path}[{i}]")
        return
    if typ.startswith("dict("):
        if not isinstance(value, dict):
            ok(False, f"{path}: expected an object for {typ}")
            return
        inner = typ[len("dict(str, "):-1]
        for k, v in value.items():
            check_type(inner, v, f"{path}.{k}")
        return
    if typ == "str":
        ok(isinstance(value, str), f"{path}: expected a string, got {value!r}")
    elif typ == "int":
        ok(isinstance(value, int) and not isinstance(value, bool), f"{path}: expected an integer, got {value!r}")
    elif typ == "float":
        ok(isinstance(value, (int, float)) and not isinstance(value, bool), f"{path}: expected a number, got {value!r}")
    elif typ == "bool":
        ok(isinstance(value, bool), f"{path}: expected a boolean, got {value!r}")
    elif typ in ("datetime", "date"):
        try:
            dateparser.isoparse(value)
            ok(True, path)
        except (TypeError, ValueError):
            ok(False, f"{path}: expected an ISO-8601 {typ}, got {value!r}")
    elif typ == "object":
        ok(True, path)
    else:
        strict(typ, value, path)


def strict(model, data, path):
    """Every field of `data` must be a field of `model`, typed as the model says."""
    if not isinstance(data, dict):
        ok(False, f"{path}: expected an object for {model}, got {type(data).__name__}")
        return
    inst = model_class(model)()
    by_json = {j: attr for attr, j in inst.attribute_map.items()}
    for key, value in data.items():
        if key not in by_json:
            ok(False, f"{path}.{key}: not a field of {model}")
            continue
        check_type(inst.swagger_types[by_json[key]], value, f"{path}.{key}")
    for key in REQUIRED.get(model, []):
        ok(data.get(key) is not None, f"{path}: {model} lacks {key}")


class _Resp:
    """Just enough of a urllib3 response for ApiClient.deserialize."""

    def __init__(self, data):
        self.data = json.dumps(data)

    def getheader(self, _name):
        return "application/json"


def find_outdated(obj, path):
    """SDK enum setters replace unknown values with 'outdated_sdk_version'."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            find_outdated(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            find_outdated(v, f"{path}[{i}]")
    elif obj == "outdated_sdk_version":
        ok(False, f"{path}: value not in the SDK's enum")


def sdk_deserialize(client, model, data, path):
    """Deserializes through the SDK, then checks strictly."""
    try:
        obj = client.deserialize(_Resp(data), model)
    except Exception as e:  # the SDK raises several kinds
        ok(False, f"{path}: the SDK cannot deserialize {model}: {e}")
        return None
    ok(obj is not None, f"{path}: deserialized to None")
    if obj is not None:
        find_outdated(obj.to_dict(), path)
    strict(model, data, path)
    return obj


def control(base, method, path, body=None):
    req = urllib.request.Request(f"{base}/_emulator{path}", method=method)
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, data=data, timeout=10) as r:
        raw = r.read()
        return json.loads(raw) if raw else None


def channel_topic(topic_id):
    t = gc.ChannelTopic()
    t.id = topic_id
    return t


def last_json(client):
    return json.loads(client.last_response.data)


def walk(client, call, model, what, **kwargs):
    """Calls a paged SDK method from page 1, following nextUri; checks every
    page strictly and its links. Returns the entities' JSON, in order."""
    entities = []
    page = 1
    while True:
        call(page_number=page, **kwargs)
        data = last_json(client)
        sdk_deserialize(client, model, data, f"{what} page {page}")
        ok(data.get("pageNumber") == page, f"{what} page {page}: pageNumber")
        ok(("previousUri" in data) == (page > 1), f"{what} page {page}: previousUri only after page 1")
        entities.extend(data.get("entities", []))
        nxt = data.get("nextUri")
        if not nxt:
            break
        ok(f"pageNumber={page + 1}" in nxt, f"{what} page {page}: nextUri names the next page")
        page += 1
        if page > 500:
            ok(False, f"{what}: nextUri never ends")
            break
    if "total" in data:
        ok(data["total"] == len(entities), f"{what}: total {data['total']} == {len(entities)} walked")
        ok(data["pageCount"] == page or (data["total"] == 0 and page == 1),
           f"{what}: pageCount {data['pageCount']} == {page} pages")
    ids = [e.get("id") for e in entities]
    ok(len(ids) == len(set(ids)), f"{what}: no entity twice")
    return entities


def check_directory(client, base):
    users_api = gc.UsersApi(client)
    routing = gc.RoutingApi(client)
    # A few users in the other states, through the control API.
    inactive = control(base, "POST", "/directory/users", {"state": "inactive"})["id"]
    deleted = control(base, "POST", "/directory/users", {"state": "deleted"})["id"]
    directory = control(base, "GET", "/directory")
    by_state = {}
    for u in directory["users"]:
        by_state.setdefault(u["state"], []).append(u["id"])

    for state in ("active", "inactive", "deleted", "any"):
        got = walk(client, users_api.get_users, "UserEntityListing", f"GET users state={state}",
                   page_size=7, state=state)
        want = [u["id"] for u in directory["users"]] if state == "any" else by_state.get(state, [])
        ok([u["id"] for u in got] == want, f"GET users state={state}: every user, in creation order")
        if state != "any":
            ok(all(u["state"] == state for u in got), f"GET users state={state}: states")
    ok(inactive in by_state.get("inactive", []) and deleted in by_state.get("deleted", []),
       "control API users have their states")
    try:
        users_api.get_users(page_size=501)
        ok(False, "GET users pageSize=501 must fail")
    except ApiException as e:
        ok(e.status == 400, f"GET users pageSize=501: status {e.status}")
        sdk_deserialize(client, "ErrorBody", json.loads(e.body), "400 ErrorBody")

    queues = walk(client, routing.get_routing_queues, "QueueEntityListing", "GET queues", page_size=4)
    ok(sorted(q["id"] for q in queues) == sorted(q["id"] for q in directory["queues"]),
       "GET queues lists every queue")
    names = [q["name"] for q in queues]
    ok(names == sorted(names, key=str.lower), "GET queues sorted by name")
    divisions = [d["id"] for d in directory["divisions"]]
    some = walk(client, routing.get_routing_queues, "QueueEntityListing", "GET queues name=s*",
                page_size=2, name="s*", division_id=divisions[:1])
    want = sorted(q["name"] for q in directory["queues"]
                  if q["name"].lower().startswith("s") and q["divisionId"] == divisions[0])
    ok(sorted(q["name"] for q in some) == want, f"GET queues name=s* divisionId: {want}")
    ok(all(q["division"]["id"] == divisions[0] for q in some), "GET queues divisionId filter")
    both = walk(client, routing.get_routing_queues, "QueueEntityListing", "GET queues 2 divisions",
                page_size=25, division_id=divisions)
    ok(len(both) == len(directory["queues"]), "GET queues with every division lists every queue")

    active = set(by_state.get("active", []))
    for q in directory["queues"][:3]:
        members = walk(client, routing.get_routing_queue_members, "QueueMemberEntityListing",
                       f"GET members {q['name']}", queue_id=q["id"], page_size=3)
        want = sorted(m for m in q["members"] if m in active)
        ok(sorted(m["id"] for m in members) == want, f"GET members {q['name']}: active members")
        ok(all(m["user"]["id"] == m["id"] for m in members), f"GET members {q['name']}: user is the member")
        count = next(x for x in queues if x["id"] == q["id"])["memberCount"]
        ok(count == len(want), f"{q['name']}: memberCount {count} == {len(want)}")
    try:
        routing.get_routing_queue_members("no-such-queue")
        ok(False, "GET members of an unknown queue must fail")
    except ApiException as e:
        ok(e.status == 404, f"GET members of an unknown queue: status {e.status}")
        sdk_deserialize(client, "ErrorBody", json.loads(e.body), "404 ErrorBody")


def check_state(client, base, user, queue):
    """Presence, routing status and the details query, through the SDK: the
    replies must be the SDK's models and equal what was last published."""
    presence_api = gc.PresenceApi(client)
    users_api = gc.UsersApi(client)
    conversations = gc.ConversationsApi(client)
    other = control(base, "GET", "/ids")["userIds"][1]

    # A known presence and routing status, published as events.
    control(base, "POST", "/publish", {"topic": f"v2.users.{user}.presence", "body": {
        "source": "PURECLOUD",
        "presenceDefinition": {"id": "6a3af858-942f-489d-9700-000000000001", "systemPresence": "Busy"},
        "message": "in a meeting",
        "modifiedDate": "2030-01-01T00:00:00.000Z",
    }})
    seq = control(base, "POST", "/publish", {"topic": f"v2.users.{user}.routingStatus"})["seq"]
    truth = control(base, "GET", f"/state/users/{user}")
    ok(truth["routingStatus"]["seq"] == seq, "control state names the last routingStatus event")

    # The SDK sends the id list comma-joined; the emulator leaves unknown ids out.
    got = presence_api.get_users_presences_purecloud_bulk(id=[user, "no-such-user", other])
    data = last_json(client)
    ok(isinstance(data, list), "bulk presence is a JSON array")
    for i, entry in enumerate(data):
        sdk_deserialize(client, "UcUserPresence", entry, f"bulk presence [{i}]")
    ok([p.user_id for p in got] == [user, other], "bulk presence: asked users in order, unknown left out")
    mine = got[0]
    ok(mine.presence_definition.system_presence == "Busy" and mine.message == "in a meeting",
       "bulk presence equals the published body")
    ok(mine.modified_date.year == 2030, "bulk presence keeps the published modifiedDate")
    try:
        presence_api.get_users_presences_purecloud_bulk(id=[f"u{i}" for i in range(51)])
        ok(False, "bulk presence with 51 ids must fail")
    except ApiException as e:
        ok(e.status == 400, f"bulk presence with 51 ids: status {e.status}")
        sdk_deserialize(client, "ErrorBody", json.loads(e.body), "bulk 400 ErrorBody")

    one = presence_api.get_user_presences_purecloud(user)
    sdk_deserialize(client, "UserPresence", last_json(client), "user presence")
    ok(one.presence_definition.system_presence == "Busy", "user presence equals the published body")

    status = users_api.get_user_routingstatus(user)
    sdk_deserialize(client, "RoutingStatus", last_json(client), "routing status")
    ok(status.user_id == user and status.status == truth["routingStatus"]["status"],
       "routing status equals the last published event")
    try:
        users_api.get_user_routingstatus("no-such-user")
        ok(False, "routing status of an unknown user must fail")
    except ApiException as e:
        ok(e.status == 404, f"routing status of an unknown user: status {e.status}")
        sdk_deserialize(client, "ErrorBody", json.loads(e.body), "routing status 404 ErrorBody")

    # Conversations on the queue: one open, one ended (the same body with
    # every participant's endTime set).
    topic = f"v2.routing.queues.{queue}.conversations.calls"
    control(base, "POST", "/publish", {"topic": topic})
    ended = control(base, "GET", f"/sample-body?topic={urllib.request.quote(topic)}")["body"]
    end_time = max(p["connectedTime"] for p in ended["participants"])
    for p in ended["participants"]:
        p.setdefault("endTime", end_time)
    control(base, "POST", "/publish", {"topic": topic, "body": ended})
    kept = control(base, "GET", f"/state/conversations?queueId={queue}")

    query = gc.ConversationQuery()
    query.interval = "2000-01-01T00:00:00.000Z/2100-01-01T00:00:00.000Z"
    query.order = "asc"
    query.order_by = "conversationStart"
    predicate = gc.SegmentDetailQueryPredicate()
    predicate.type = "dimension"
    predicate.dimension = "queueId"
    predicate.operator = "matches"
    predicate.value = queue
    segment_filter = gc.SegmentDetailQueryFilter()
    segment_filter.type = "and"
    segment_filter.predicates = [predicate]
    query.segment_filters = [segment_filter]
    paging = gc.PagingSpec()
    paging.page_size = 100
    paging.page_number = 1
    query.paging = paging
    reply = conversations.post_analytics_conversations_details_query(query)
    data = last_json(client)
    sdk_deserialize(client, "AnalyticsConversationQueryResponse", data, "details query")
    ok(reply.total_hits == len(kept), f"details query: totalHits {reply.total_hits} == {len(kept)} kept")
    found = {c.conversation_id: c for c in reply.conversations or []}
    ok(ended["id"] in found and found[ended["id"]].conversation_end is not None,
       "details query shows the ended conversation with its end")
    ok(all(any(s.queue_id == queue for p in c.participants for sess in p.sessions for s in sess.segments)
           for c in found.values()), "details query: every conversation has a segment on the queue")

    empty = gc.ConversationQuery()
    empty.interval = "2000-01-01T00:00:00.000Z/2000-01-02T00:00:00.000Z"
    reply = conversations.post_analytics_conversations_details_query(empty)
    sdk_deserialize(client, "AnalyticsConversationQueryResponse", last_json(client), "empty details query")
    ok(reply.total_hits == 0 and not reply.conversations, "details query before any conversation is empty")
    bad = gc.ConversationQuery()
    bad.interval = "2000-01-02T00:00:00.000Z/2000-01-01T00:00:00.000Z"
    try:
        conversations.post_analytics_conversations_details_query(bad)
        ok(False, "a backwards interval must fail")
    except ApiException as e:
        ok(e.status == 400, f"backwards interval: status {e.status}")
        sdk_deserialize(client, "ErrorBody", json.loads(e.body), "details query 400 ErrorBody")


def main():
    base = sys.argv[1].rstrip("/")
    ids = control(base, "GET", "/ids")
    user, queue = ids["userIds"][0], ids["queueIds"][0]

    # ---- OAuth -----------------------------------------------------------
    bad = gc.api_client.ApiClient(host=base)
    try:
        bad.get_client_credentials_token(CLIENT_ID, "wrong-secret")
        ok(False, "login with a wrong secret must fail")
    except ApiException as e:
        ok(e.status == 401, f"wrong secret: status {e.status}")
        ok(json.loads(e.body).get("error") == "invalid_client", "wrong secret: error invalid_client")

    client = gc.api_client.ApiClient(host=base).get_client_credentials_token(CLIENT_ID, CLIENT_SECRET)
    ok(bool(client.access_token), "client-credentials login gives a token")
    api = gc.NotificationsApi(client)

    # ---- channels ----------------------------------------------------------
    ch = api.post_notifications_channels()
    sdk_deserialize(client, "Channel", last_json(client), "POST channels")
    ok(ch.id.startswith("streaming-0-"), f"channel id {ch.id}")
    ok(ch.connect_uri.endswith("/channels/" + ch.id), "connectUri ends with the id")
    ok(ch.connect_uri.startswith("ws://"), "connectUri is a ws:// URL")
    ok(ch.expires is not None and ch.expires.year >= 2024, "expires is a date")

    api.head_notifications_channel(ch.id)
    ok(client.last_response.status == 200, "HEAD live channel is 200")
    try:
        api.head_notifications_channel("streaming-0-doesnotexist")
        ok(False, "HEAD unknown channel must fail")
    except ApiException as e:
        ok(e.status == 404, f"HEAD unknown channel: {e.status}")

    listing = api.get_notifications_channels(includechannels="token")
    sdk_deserialize(client, "ChannelEntityListing", last_json(client), "GET channels token")
    ok(any(c.id == ch.id for c in listing.entities), "GET channels lists the new channel")
    api.get_notifications_channels(includechannels="oauthclient")
    sdk_deserialize(client, "ChannelEntityListing", last_json(client), "GET channels oauthclient")

    # ---- subscriptions -------------------------------------------------------
    presence = f"v2.users.{user}.presence"
    routing = f"v2.users.{user}.routingStatus"
    qconv = f"v2.routing.queues.{queue}.conversations"
    topics = [channel_topic(t) for t in (presence, routing)]
    res = api.put_notifications_channel_subscriptions(ch.id, topics)
    sdk_deserialize(client, "ChannelTopicEntityListing", last_json(client), "PUT subscriptions")
    ok([t.id for t in res.entities] == [presence, routing], "PUT lists both topics")
    ok(all(t.state == "Permitted" for t in res.entities), "PUT topics are Permitted")

    res = api.post_notifications_channel_subscriptions(ch.id, [channel_topic(qconv)])
    sdk_deserialize(client, "ChannelTopicEntityListing", last_json(client), "POST subscriptions")
    ok(len(res.entities) == 3, "POST adds a topic")

    forbidden = "v2.users.forbidden-1.presence"
    res = api.post_notifications_channel_subscriptions(
        ch.id, [channel_topic(forbidden)], ignore_errors=True
    )
    sdk_deserialize(client, "ChannelTopicEntityListing", last_json(client), "POST ignoreErrors")
    rejected = [t for t in res.entities if t.id == forbidden]
    ok(len(rejected) == 1 and rejected[0].state == "Rejected", "forbidden topic is Rejected with ignoreErrors")
    ok(bool(rejected and rejected[0].rejection_reason), "Rejected topic has a rejectionReason")
    try:
        api.post_notifications_channel_subscriptions(ch.id, [channel_topic(forbidden)])
        ok(False, "forbidden topic without ignoreErrors must fail")
    except ApiException as e:
        ok(e.status == 403, f"forbidden topic: status {e.status}")
        body = json.loads(e.body)
        sdk_deserialize(client, "ErrorBody", body, "403 ErrorBody")
        ok(body.get("code") == "notification.unauthorized.topic", "403 code")

    res = api.get_notifications_channel_subscriptions(ch.id)
    sdk_deserialize(client, "ChannelTopicEntityListing", last_json(client), "GET subscriptions")
    ok(len(res.entities) == 3, "GET subscriptions lists 3 topics")

    # ---- catalogue -------------------------------------------------------------
    expand = ["description", "schema", "transports", "topicParameters", "requiresPermissions"]
    cat = api.get_notifications_availabletopics(expand=expand)
    sdk_deserialize(client, "AvailableTopicEntityListing", last_json(client), "availabletopics")
    cat_ids = {t.id for t in cat.entities}
    for template in BODY_MODELS:
        ok(template in cat_ids, f"catalogue has {template}")
    pres = next((t for t in cat.entities if t.id == "v2.users.{id}.presence"), None)
    ok(pres is not None and pres.description and pres.transports and pres.topic_parameters == ["id"],
       "expanded presence entry has description, transports, topicParameters")
    ok(pres is not None and isinstance(pres.schema, dict), "expanded entry has a schema")

    # ---- directory -----------------------------------------------------------------
    check_directory(client, base)

    # ---- current state (resync after a gap) -----------------------------------------
    check_state(client, base, user, queue)

    # ---- sample bodies (control endpoint) ------------------------------------------
    def topic_for(template):
        if template.startswith("v2.users."):
            return template.replace("{id}", user)
        if "queues." in template:
            return template.replace("{id}", queue)
        return template.replace("{id}", "c0ffee00-0000-4000-8000-000000000001")

    for _ in range(3):  # bodies are random: look at a few of each
        for template, model in BODY_MODELS.items():
            topic = topic_for(template)
            body = control(base, "GET", f"/sample-body?topic={urllib.request.quote(topic)}")["body"]
            sdk_deserialize(client, model, body, f"sample {template}")

    # ---- real socket frames ------------------------------------------------------------
    ws = websocket.create_connection(ch.connect_uri, timeout=10)
    ws.send(json.dumps({"message": "ping"}))
    frames = []

    def recv_until(pred, what, limit=15.0):
        deadline = time.time() + limit
        while time.time() < deadline:
            try:
                f = json.loads(ws.recv())
            except websocket.WebSocketTimeoutException:
                break
            frames.append(f)
            if pred(f):
                return f
        ok(False, f"socket: no {what}")
        return None

    recv_until(lambda f: f.get("eventBody", {}).get("message") == "pong", "pong")
    recv_until(lambda f: f.get("eventBody", {}).get("message") == "WebSocket Heartbeat", "heartbeat")

    sock_topics = [topic_for(t) for t in BODY_MODELS]
    api.put_notifications_channel_subscriptions(ch.id, [channel_topic(t) for t in sock_topics])
    seqs = {}
    for t in sock_topics:
        seqs[control(base, "POST", "/publish", {"topic": t})["seq"]] = t
    got = 0
    while got < len(seqs):
        f = recv_until(lambda f: f.get("topicName") in sock_topics, "event frames")
        if f is None:
            break
        got += 1
        body = dict(f["eventBody"])
        seq = body.pop("emulatorSequence", None)
        ok(seqs.get(seq) == f["topicName"], f"frame {f['topicName']}: emulatorSequence {seq}")
        ok(f.get("version") == "2", "frame version is 2")
        ok(isinstance(f.get("metadata", {}).get("CorrelationId"), str), "frame has metadata.CorrelationId")
        template = next(tpl for tpl in BODY_MODELS if topic_for(tpl) == f["topicName"])
        sdk_deserialize(client, BODY_MODELS[template], body, f"socket {template}")

    # System messages: a topic moved to a newer channel, then socket_closing.
    ch2 = api.post_notifications_channels()
    api.put_notifications_channel_subscriptions(ch2.id, [channel_topic(presence)])
    f = recv_until(lambda f: f.get("topicName", "").startswith("v2.system.no_longer_subscribed."),
                   "no_longer_subscribed")
    if f:
        sdk_deserialize(client, "SystemMessageSystemMessage", f["eventBody"], "no_longer_subscribed")
        ok(f["eventBody"].get("reason") == "another_channel_subscribed", "no_longer_subscribed reason")
    control(base, "POST", "/faults/socket-closing", {"channel": ch.id, "graceMs": 500})
    f = recv_until(lambda f: f.get("topicName") == "v2.system.socket_closing", "socket_closing")
    if f:
        sdk_deserialize(client, "SystemMessageSystemMessage", f["eventBody"], "socket_closing")
    ws.close()

    api.delete_notifications_channel_subscriptions(ch.id)
    res = api.get_notifications_channel_subscriptions(ch.id)
    ok(len(res.entities) == 0, "DELETE removes all subscriptions")

    print(f"{passes} passed, {len(failures)} failed", flush=True)
    return 1 if failures else 0


# ---- resync records ------------------------------------------------------------

# Topic template -> eventBody model, from notificationMappings.json of
# Genesys' SDK repositories (MyPureCloud/platform-client-sdk-*; the entries
# agree across them). The PyPI package of the SDK does not ship that file,
# so the entries for the topics the bridge resyncs are copied here; a
# notificationMappings.json in the package or given with --mappings takes
# their place (and must agree with them).
SDK_NOTIFICATION_MAPPINGS = {
    "v2.users.{id}.presence": "PresenceEventUserPresence",
    "v2.users.{id}.routingStatus": "UserRoutingStatusUserRoutingStatus",
    "v2.users.{id}.conversations": "ConversationEventTopicConversation",
    "v2.routing.queues.{id}.conversations": "QueueConversationEventTopicConversation",
}

ENVELOPE = {"topicName", "version", "eventBody", "metadata"}


def load_mappings(path):
    """Topic template -> model: the SDK's notificationMappings.json (given,
    or shipped in the package), else the entries copied above."""
    if path is None:
        pkg = os.path.dirname(gc.__file__)
        for candidate in (os.path.join(pkg, "notificationMappings.json"),
                          os.path.join(os.path.dirname(pkg), "notificationMappings.json")):
            if os.path.isfile(candidate):
                path = candidate
                break
    if path is None:
        print("records: notificationMappings.json is not in the SDK package; "
              "using the entries copied from it", flush=True)
        return dict(SDK_NOTIFICATION_MAPPINGS)
    with open(path, encoding="utf-8") as f:
        mappings = {n["topic"]: n["class"] for n in json.load(f)["notifications"]}
    for template, model in SDK_NOTIFICATION_MAPPINGS.items():
        ok(mappings.get(template) == model,
           f"{path}: {template} maps to {mappings.get(template)}, the copy says {model}")
    print(f"records: notification mappings from {path}", flush=True)
    return mappings


def template_of(topic, mappings):
    """The mapping template a single topic name matches ({id}: one segment)."""
    parts = topic.split(".")
    best = None
    for template in mappings:
        tparts = template.split(".")
        if len(tparts) != len(parts):
            continue
        if all(t == p or (t == "{id}" and p) for t, p in zip(tparts, parts)):
            # The most literal template wins (v2.system.socket_closing over v2.system.{id}.{id}).
            if best is None or template.count("{id}") < best.count("{id}"):
                best = template
    return best


def topic_ids(template, topic):
    return [p for t, p in zip(template.split("."), topic.split(".")) if t == "{id}"]


def check_record(client, mappings, n, record, counts):
    where = f"record {n}"
    if not isinstance(record, dict) or set(record) != {"topic", "value"}:
        ok(False, f"{where}: not a {{topic, value}} object")
        return
    topic, value = record["topic"], record["value"]
    where = f"record {n} ({topic})"
    if not isinstance(topic, str) or not isinstance(value, dict):
        ok(False, f"{where}: topic must be a string, value an object")
        return
    ok("?" not in topic and "," not in topic, f"{where}: a single topic, not a combined one")
    # The envelope: what a notification frame carries, nothing more.
    for key in sorted(set(value) - ENVELOPE):
        ok(False, f"{where}: {key} is not a field of a notification")
    for key in sorted(ENVELOPE - set(value)):
        ok(False, f"{where}: no {key}")
    ok(value.get("topicName") == topic, f"{where}: topicName {value.get('topicName')!r} is not the record's topic")
    ok(value.get("version") == "2", f"{where}: version is {value.get('version')!r}, not \"2\"")
    meta = value.get("metadata")
    ok(isinstance(meta, dict) and set(meta) == {"CorrelationId"}
       and isinstance(meta.get("CorrelationId"), str) and meta["CorrelationId"] != "",
       f"{where}: metadata is {meta!r}, not {{CorrelationId: string}}")

    template = template_of(topic, mappings)
    if template is None:
        ok(False, f"{where}: no SDK notification mapping for this topic")
        return
    model = mappings[template]
    if not hasattr(gc, model):
        ok(False, f"{where}: the SDK has no model {model} (mapped from {template})")
        return
    body = value.get("eventBody")
    sdk_deserialize(client, model, body, f"{where} eventBody")
    counts[template] = counts.get(template, 0) + 1
    if not isinstance(body, dict):
        return

    # The body stands for its topic's resource.
    (rid,) = topic_ids(template, topic) or [None]
    if model == "UserRoutingStatusUserRoutingStatus":
        ok(body.get("id") == rid, f"{where}: eventBody.id {body.get('id')!r} is not the topic's user")
    if model in ("ConversationEventTopicConversation", "QueueConversationEventTopicConversation"):
        participants = body.get("participants") or []
        ok(len(participants) > 0, f"{where}: a conversation without participants")
        key = "queueId" if model.startswith("Queue") else "userId"
        ok(any(isinstance(p, dict) and p.get(key) == rid for p in participants),
           f"{where}: no participant has {key} {rid}")
        if participants and all(isinstance(p, dict) and p.get("endTime") for p in participants):
            counts["ended conversations"] = counts.get("ended conversations", 0) + 1


def check_records(path, mappings_path):
    mappings = load_mappings(mappings_path)
    client = gc.api_client.ApiClient()
    counts = {}
    n = 0
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            n += 1
            try:
                record = json.loads(line)
            except ValueError as e:
                ok(False, f"{path}:{line_no}: not JSON: {e}")
                continue
            check_record(client, mappings, n, record, counts)
    ok(n > 0, f"{path}: no records")
    for template in SDK_NOTIFICATION_MAPPINGS:
        ok(counts.get(template, 0) > 0, f"records: none for {template}")
    ok(counts.get("ended conversations", 0) > 0, "records: no ended conversation")
    print("records: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())), flush=True)
    print(f"records: {n} checked, {passes} checks passed, {len(failures)} failed", flush=True)
    return 1 if failures else 0


def usage():
    print(__doc__.split("\n\n")[1], file=sys.stderr)
    return 2


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--records"]:
        if len(args) == 2:
            sys.exit(check_records(args[1], None))
        if len(args) == 4 and args[2] == "--mappings":
            sys.exit(check_records(args[1], args[3]))
        sys.exit(usage())
    if len(args) != 1 or args[0].startswith("-"):
        sys.exit(usage())
    sys.exit(main())
