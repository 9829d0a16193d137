"""Seeds moto_server for pilotfish's discovery tests, with boto3 from the test venv.

Usage: seed.py ENDPOINT '<json command>'  ->  prints a JSON result.
Commands are small, named operations so each test reads as what it sets up.
"""
import json
import sys

import boto3

endpoint, cmd = sys.argv[1], json.loads(sys.argv[2])
kw = dict(endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing")
op = cmd.pop("op")


def sd():
    return boto3.client("servicediscovery", **kw)


def ecs():
    return boto3.client("ecs", **kw)


def out(v):
    print(json.dumps(v))
    sys.exit(0)


if op == "cloud_map_service":
    c = sd()
    c.create_http_namespace(Name=cmd["namespace"])
    ns = next(n["Id"] for n in c.list_namespaces()["Namespaces"] if n["Name"] == cmd["namespace"])
    svc = c.create_service(Name=cmd["service"], NamespaceId=ns, HealthCheckCustomConfig={"FailureThreshold": 1})
    out({"namespace_id": ns, "service_id": svc["Service"]["Id"]})

if op == "register":
    sd().register_instance(
        ServiceId=cmd["service_id"],
        InstanceId=cmd["instance_id"],
        Attributes={"AWS_INSTANCE_IPV4": cmd["ip"], "AWS_INSTANCE_PORT": str(cmd["port"])},
    )
    out({})

if op == "deregister":
    sd().deregister_instance(ServiceId=cmd["service_id"], InstanceId=cmd["instance_id"])
    out({})

if op == "health":
    sd().update_instance_custom_health_status(ServiceId=cmd["service_id"], InstanceId=cmd["instance_id"], Status=cmd["status"])
    out({})

if op == "ecs_service":
    ec2 = boto3.client("ec2", **kw)
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.0.0/18")["Subnet"]["SubnetId"]
    sg = ec2.create_security_group(GroupName="tasks", Description="tasks", VpcId=vpc)["GroupId"]
    e = ecs()
    e.create_cluster(clusterName=cmd["cluster"])
    e.register_task_definition(
        family="app",
        networkMode="awsvpc",
        requiresCompatibilities=["FARGATE"],
        cpu="256",
        memory="512",
        containerDefinitions=[{"name": "app", "image": "app:1", "memory": 512, "portMappings": [{"containerPort": cmd["port"]}]}],
    )
    e.create_service(cluster=cmd["cluster"], serviceName=cmd["service"], taskDefinition="app", desiredCount=0)
    # Keep tasks RUNNING: moto advances a task's lastStatus on every DescribeTasks otherwise.
    import urllib.request

    req = urllib.request.Request(
        endpoint + "/moto-api/state-manager/set-transition",
        data=json.dumps({"model_name": "ecs::task", "transition": {"progression": "manual", "times": 1000000000}}).encode(),
        method="POST",
    )
    urllib.request.urlopen(req).read()
    arns = []
    left = cmd["tasks"]
    while left > 0:
        n = min(left, 10)
        r = e.run_task(
            cluster=cmd["cluster"],
            taskDefinition="app",
            count=n,
            launchType="FARGATE",
            group="service:" + cmd["service"],
            networkConfiguration={"awsvpcConfiguration": {"subnets": [subnet], "securityGroups": [sg]}},
        )
        arns += [t["taskArn"] for t in r["tasks"]]
        left -= n
    # Tasks of another service in the same cluster must not be picked up.
    e.run_task(
        cluster=cmd["cluster"],
        taskDefinition="app",
        count=2,
        launchType="FARGATE",
        group="service:other",
        networkConfiguration={"awsvpcConfiguration": {"subnets": [subnet], "securityGroups": [sg]}},
    )
    tasks = []
    for i in range(0, len(arns), 100):
        for t in e.describe_tasks(cluster=cmd["cluster"], tasks=arns[i : i + 100])["tasks"]:
            ip = next(d["value"] for a in t["attachments"] for d in a["details"] if d["name"] == "privateIPv4Address")
            tasks.append({"arn": t["taskArn"], "ip": ip})
    out({"tasks": tasks})

if op == "stop_task":
    ecs().stop_task(cluster=cmd["cluster"], task=cmd["arn"], reason="test")
    out({})

if op == "ecs_simple_service":
    e = ecs()
    e.create_cluster(clusterName=cmd["cluster"])
    e.register_task_definition(family="app", containerDefinitions=[{"name": "app", "image": "app:1", "memory": 512}])
    e.create_service(cluster=cmd["cluster"], serviceName=cmd["service"], taskDefinition="app", desiredCount=cmd["desired"])
    out({})

if op == "desired_count":
    s = ecs().describe_services(cluster=cmd["cluster"], services=[cmd["service"]])["services"][0]
    out({"desired": s["desiredCount"]})

if op == "cw_sum":
    import datetime

    now = datetime.datetime.now(datetime.timezone.utc)
    r = boto3.client("cloudwatch", **kw).get_metric_statistics(
        Namespace=cmd["namespace"],
        MetricName=cmd["metric"],
        Dimensions=[{"Name": k, "Value": v} for k, v in cmd["dimensions"].items()],
        StartTime=now - datetime.timedelta(hours=1),
        EndTime=now + datetime.timedelta(minutes=5),
        Period=60,
        Statistics=["Sum", "SampleCount"],
    )
    out({"sum": sum(d["Sum"] for d in r["Datapoints"]), "samples": sum(d["SampleCount"] for d in r["Datapoints"])})

if op == "cw_names":
    names = set()
    for page in boto3.client("cloudwatch", **kw).get_paginator("list_metrics").paginate(Namespace=cmd["namespace"]):
        names.update(m["MetricName"] for m in page["Metrics"])
    out({"names": sorted(names)})

if op == "aas_describe":
    c = boto3.client("application-autoscaling", **kw)
    targets = c.describe_scalable_targets(ServiceNamespace="ecs")["ScalableTargets"]
    policies = c.describe_scaling_policies(ServiceNamespace="ecs")["ScalingPolicies"]
    out(json.loads(json.dumps({"targets": targets, "policies": policies}, default=str)))

sys.exit("unknown op " + op)
