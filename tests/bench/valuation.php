<?php
// valuation.php: the peer scripts/bench measures leadbridge against: the small PHP handler a
// site owner would write instead (php-fpm + php-curl). It does the bridge's valuation job
// without durability: parse the form, check it, call LeadPro's instant valuation with curl,
// answer JSON with the estimate. If the API call fails the lead is lost (nothing is queued).
// LEADPRO_URL and LEADPRO_API_KEY come from the pool's env[] settings.

header('Content-Type: application/json');
header('Cache-Control: no-store');

function fail($status, $code, $message)
{
    http_response_code($status);
    echo json_encode(['error' => ['code' => $code, 'message' => $message]]);
    exit;
}

if (($_SERVER['REQUEST_METHOD'] ?? '') !== 'POST') {
    fail(405, 'method_not_allowed', 'POST only');
}
$in = function ($k) { return trim((string)($_POST[$k] ?? '')); };

$errors = [];
$lead = [];
$purpose = $in('purpose');
$lead['type'] = $purpose === 'let' ? 'landlord' : 'vendor';
$address = $in('address');
if (!preg_match('/^.{1,100}$/us', $address)) {   // 1 to 100 characters of valid UTF-8
    $errors['address'] = 'please give the address';
}
$lead['address'] = $address;
$postcode = $in('postcode') !== '' ? $in('postcode') : $address;
if (preg_match('/([A-Za-z]{1,2}[0-9][A-Za-z0-9]?)\s*([0-9][A-Za-z]{2})/', $postcode, $m)) {
    $lead['postcode'] = strtoupper($m[1] . ' ' . $m[2]);
} else {
    $errors['postcode'] = 'please give a UK postcode';
}
$beds = $in('bedrooms');
if ($beds !== '') {
    if (!ctype_digit($beds) || (int)$beds > 20) {
        $errors['property_bedrooms'] = 'between 0 and 20';
    } else {
        $lead['property_bedrooms'] = (int)$beds;
    }
}
$types = ['Detached' => 'detached', 'Semi-detached' => 'semi-detached',
          'Terraced' => 'terraced', 'Flat' => 'flat-maisonette', 'Maisonette' => 'flat-maisonette'];
if (isset($types[$in('property_type')])) {
    $lead['property_type'] = $types[$in('property_type')];
}
if (preg_match('/^\s*(\S+)\s+(.+?)\s*$/u', $in('name'), $m)) {
    $lead['first_name'] = $m[1];
    $lead['last_name'] = $m[2];
} else {
    $errors['first_name'] = 'please give your full name';
}
$email = strtolower($in('email'));
if (filter_var($email, FILTER_VALIDATE_EMAIL) === false) {
    $errors['email'] = 'please give a valid email address';
}
$lead['email'] = $email;
$phone = preg_replace('/[\s()-]/', '', $in('phone'));
if (!preg_match('/^\+?[0-9]{7,15}$/', $phone)) {
    $errors['phone'] = 'please give a valid phone number';
}
$lead['phone'] = $phone;
$lead['gdpr_checkbox'] = in_array(strtolower($in('consent')), ['1', 'yes', 'on', 'true'], true);
foreach (['utm_source', 'utm_medium', 'utm_campaign', 'utm_term', 'utm_content'] as $k) {
    if ($in($k) !== '') {
        $lead[$k] = substr($in($k), 0, 255);
    }
}
if ($errors) {
    http_response_code(422);
    echo json_encode(['error' => ['code' => 'invalid', 'message' => 'some fields need attention'],
                      'fields' => $errors]);
    exit;
}

$ch = curl_init(getenv('LEADPRO_URL') . '/leads/valuation');
curl_setopt_array($ch, [
    CURLOPT_POST => true,
    CURLOPT_POSTFIELDS => json_encode($lead),
    CURLOPT_HTTPHEADER => ['Content-Type: application/json', 'Accept: application/json',
                           'X-API-KEY: ' . getenv('LEADPRO_API_KEY'), 'Expect:'],
    CURLOPT_RETURNTRANSFER => true,
    CURLOPT_CONNECTTIMEOUT => 3,
    CURLOPT_TIMEOUT => 10,
]);
$body = curl_exec($ch);
$status = curl_getinfo($ch, CURLINFO_RESPONSE_CODE);
curl_close($ch);
if ($body === false || $status < 200 || $status > 299) {
    fail(502, 'upstream', 'the valuation service did not answer');
}
$r = json_decode($body, true);
if (!is_array($r) || !isset($r['data']['id'])) {
    fail(502, 'upstream', 'the valuation service gave no lead');
}
$out = ['ok' => true, 'status' => 'created', 'targets' => ['leadpro' => 'created']];
if (($r['valuation_status'] ?? '') === 'Success') {
    $out['valuation'] = [
        'status' => 'Success',
        'sale' => ['min' => $r['minimum_sale_estimation'] ?? null,
                   'avg' => $r['average_sale_estimation'] ?? null,
                   'max' => $r['maximum_sale_estimation'] ?? null],
        'rent' => ['min' => $r['minimum_rent_estimation'] ?? null,
                   'avg' => $r['average_rent_estimation'] ?? null,
                   'max' => $r['maximum_rent_estimation'] ?? null],
    ];
}
echo json_encode($out);
