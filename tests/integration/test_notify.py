"""test_notify.py: a person is told (issue 13, part 5).

conf/notify.json is conf/ops.json plus "notify": a webhook to the stand-in (/webhook/notify,
which checks the Standard Webhooks signature and records only well-signed posts) and mail through
a fake sendmail program (a shell script that stores its arguments and the message), queue_age 2 s.

- A permanent refusal becomes a dead letter, and the stand-in receiver gets one signed notice:
  the form, the target, the reason, the job id for `leadbridge queue show` and nothing personal;
  the fake sendmail is run as `sendmail -t -oi` with the same facts in a plain-text mail.
- Rate limit: three more dead letters of the same form and target within min_interval send
  nothing more; the metrics count them as suppressed.
- A stuck queue (the API down, the oldest job older than queue_age): `queue run` (the cron path)
  sends a "queue_stuck" notice.
"""

import json
import os
import shutil
import stat
import tempfile
import time
import unittest

import harness
from harness import Stack

FAKE_SENDMAIL = r"""#!/bin/sh
# A stand-in for sendmail(8): stores its arguments and the message it is given.
out=$(dirname "$0")/mail.$$
printf '%s\n' "$@" > "$out.args"
cat > "$out.tmp" && mv "$out.tmp" "$out.txt"
"""

PERSONAL = ("Grace", "Hopper", "g.hopper", "07700 900789", "example.com")


def lead(t, **over):
    d = {"first_name": "Grace", "last_name": "Hopper" + t, "email": "g.hopper%s@example.com" % t,
         "phone": "07700 900789", "property_postcode": "DE1 1JX"}
    d.update(over)
    return d


def wait_for(pred, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.1)
    return pred()


class Notify(unittest.TestCase):
    def setUp(self):
        self.mail_dir = tempfile.mkdtemp(prefix="leadbridge-mail-")
        self.addCleanup(shutil.rmtree, self.mail_dir, True)
        self.sendmail = os.path.join(self.mail_dir, "sendmail")
        with open(self.sendmail, "w") as f:
            f.write(FAKE_SENDMAIL)
        os.chmod(self.sendmail, stat.S_IRWXU)
        self.st = Stack(config="notify.json",
                        extra_env={"LB_TEST_SENDMAIL": self.sendmail}).start()
        self.addCleanup(self.st.stop)

    def notices(self):
        return [x["json"] for x in self.st.standin_leads("webhook")
                if x["path"].endswith("/webhook/notify")]

    def mails(self):
        out = []
        for name in sorted(os.listdir(self.mail_dir)):
            if name.endswith(".txt"):
                base = os.path.join(self.mail_dir, name[:-4])
                with open(base + ".txt") as f, open(base + ".args") as g:
                    out.append((g.read().split(), f.read()))
        return out

    def queue_json(self, *args):
        p = self.st.run_bin(["-c", self.st.config, "queue"] + list(args) + ["--json"], timeout=60)
        self.assertEqual(p.returncode, 0, p.stderr)
        return json.loads(p.stdout)

    def test_dead_letter_reaches_receiver_and_mail_then_rate_limit(self):
        st = self.st
        t0 = time.monotonic()
        r = st.post("/lead/create", lead("1", office="99"))
        self.assertEqual(r.status, 422, r)
        dead = [j for j in self.queue_json("list") if j["state"] == "dead"]
        self.assertEqual(len(dead), 1, dead)
        job = dead[0]["id"]

        got = wait_for(self.notices)
        self.assertEqual(len(got), 1, got)
        n = got[0]
        self.assertEqual(n["type"], "leadbridge.dead_letter")
        self.assertEqual(n["form"], "create")
        self.assertEqual(n["target"], "leadpro")
        self.assertEqual(n["job_id"], job)
        self.assertEqual(n["show"], "leadbridge queue show " + job)
        self.assertIn("office id is invalid", n["reason"])
        self.assertEqual(n["held_back"], 0)
        text = json.dumps(n)
        for p in PERSONAL:
            self.assertNotIn(p, text)
        shown = self.queue_json("show", job)     # the id works with queue show
        self.assertEqual(shown["state"], "dead")

        mails = wait_for(self.mails)
        self.assertEqual(len(mails), 1, mails)
        args, msg = mails[0]
        self.assertEqual(args, ["-t", "-oi"])
        head, _, body = msg.partition("\n\n")
        self.assertIn("To: ops@example.org, oncall@example.org", head)
        self.assertIn("From: leadbridge@example.org", head)
        self.assertIn("Subject: [leadbridge] dead letter: form create, target leadpro", head)
        self.assertIn("leadbridge queue show " + job, body)
        self.assertIn("office id is invalid", body)
        for p in PERSONAL:
            self.assertNotIn(p, msg)
        import sys
        sys.stderr.write("dead letter to notice: %.2f s\n" % (time.monotonic() - t0))

        # Three more dead letters of the same form and target: held back by min_interval.
        for i in range(3):
            self.assertEqual(st.post("/lead/create", lead("x%d" % i, office="99")).status, 422)
        time.sleep(1.5)
        self.assertEqual(len(self.notices()), 1)
        self.assertEqual(len(self.mails()), 1)
        m = st.request("GET", "/lead/metrics").body.decode()
        self.assertIn('leadbridge_notices_total{channel="webhook",result="sent"} 1', m)
        self.assertIn('leadbridge_notices_total{channel="mail",result="sent"} 1', m)
        self.assertIn('leadbridge_notices_total{channel="webhook",result="suppressed"} 3', m)
        self.assertIn('leadbridge_dead_letters_total{form="create",target="leadpro"} 4', m)

    def test_stuck_queue_notice_from_queue_run(self):
        st = self.st
        st.standin_mode({"api": "leadpro", "mode": "unavailable"})
        self.assertEqual(st.post("/lead/create", lead("q")).status, 202)
        time.sleep(3.5)     # whole seconds: the age must be over 2
        p = st.run_bin(["-c", st.config, "queue", "run"], timeout=60)
        self.assertEqual(p.returncode, 0, p.stderr)
        got = wait_for(lambda: [n for n in self.notices() if n["type"] == "leadbridge.queue_stuck"])
        self.assertEqual(len(got), 1, self.notices())
        self.assertGreaterEqual(got[0]["oldest_age"], 2)
        self.assertEqual(got[0]["queued"], 1)
        self.assertIn("oldest queued job", got[0]["reason"])
        subjects = [m for _, m in self.mails() if "queue stuck" in m]
        self.assertEqual(len(subjects), 1)
        st.standin_mode({"api": "leadpro", "mode": "ok"})


if __name__ == "__main__":
    unittest.main()
